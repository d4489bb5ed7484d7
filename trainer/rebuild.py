"""`tidelog rebuild RUN_ID`: re-materialise the recorded cut from the archive, prove the
data is the same by digest, retrain at the recorded code version, and compare the model.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from snapshotter.digest import ContentSum, TableDigest, digest_with_erased
from snapshotter.manifest import Manifest
from tidelog.errors import DatasetErased, DigestMismatch, TidelogError, TrainingError
from tidelog.openlineage import traced
from tidelog.settings import Settings
from trainer.erasure import (
    REBUILT_WITHOUT,
    erased_sums,
    erasure_tag,
    erasures_of_run,
)
from trainer.exclusions import (
    EXCLUSIONS_ARTIFACT,
    ExclusionStore,
    apply_exclusions,
    recorded_set,
)
from trainer.fingerprint import array_sha256, model_sha256, predict
from trainer.openlineage import describe_rebuild
from trainer.provider import SnapshotLike, SnapshotProvider, default_provider
from trainer.recipe import Recipe, file_sha256, load_recipe, run_recipe
from trainer.tags import REBUILD_OF, RunLineage, rebuild_verified, tidelog_version
from trainer.tracking import DEFAULT_EXPERIMENT, connect
from trainer.train import read_tables

ERASURE_PREFIX = "tidelog.erasure."

__all__ = ["TableCheck", "RebuildReport", "rebuild", "compare_digests", "check_recipe",
           "row_differences"]


@dataclass(frozen=True)
class TableCheck:
    table: str
    recorded_digest: str
    rebuilt_digest: str | None
    recorded_rows: int
    rebuilt_rows: int | None

    @property
    def match(self) -> bool:
        return self.recorded_digest == self.rebuilt_digest

    def describe(self) -> str:
        if self.rebuilt_digest is None:
            return f"{self.table}: recorded {self.recorded_digest}, missing from the rebuild"
        rows = (f"rows {self.recorded_rows} -> {self.rebuilt_rows}"
                if self.recorded_rows != self.rebuilt_rows else f"rows {self.rebuilt_rows}")
        return (f"{self.table}: digest {self.recorded_digest} recorded, "
                f"{self.rebuilt_digest} rebuilt ({rows})")

    def to_json(self) -> dict[str, Any]:
        return {"recorded": self.recorded_digest, "rebuilt": self.rebuilt_digest,
                "match": self.match, "recorded_rows": self.recorded_rows,
                "rebuilt_rows": self.rebuilt_rows}


@dataclass(frozen=True)
class RebuildReport:
    run_id: str
    new_run_id: str
    snapshot_id: str
    rebuilt_snapshot_id: str
    tables: dict[str, TableCheck]
    digest_recorded: str
    digest_rebuilt: str
    predictions_recorded: str
    predictions_rebuilt: str
    model_recorded: str
    model_rebuilt: str
    deterministic: bool
    metrics_recorded: dict[str, float]
    metrics_rebuilt: dict[str, float]
    timings: dict[str, float]
    original_timings: dict[str, float]

    @property
    def dataset_match(self) -> bool:
        return all(t.match for t in self.tables.values())

    @property
    def model_match(self) -> bool:
        return self.predictions_recorded == self.predictions_rebuilt

    @property
    def artifact_match(self) -> bool:
        return self.model_recorded == self.model_rebuilt

    @property
    def verified(self) -> bool:
        """Same data, same predictions, and same bytes where the estimator promises it."""
        return rebuild_verified(self.dataset_match, self.model_match, self.artifact_match,
                                self.deterministic)

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "new_run_id": self.new_run_id,
            "snapshot_id": self.snapshot_id,
            "rebuilt_snapshot_id": self.rebuilt_snapshot_id,
            "verified": self.verified,
            "dataset_match": self.dataset_match,
            "model_match": self.model_match,
            "artifact_match": self.artifact_match,
            "deterministic": self.deterministic,
            "digest": {"recorded": self.digest_recorded, "rebuilt": self.digest_rebuilt},
            "tables": {n: t.to_json() for n, t in sorted(self.tables.items())},
            "predictions_sha256": {"recorded": self.predictions_recorded,
                                   "rebuilt": self.predictions_rebuilt},
            "model_sha256": {"recorded": self.model_recorded, "rebuilt": self.model_rebuilt},
            "metrics": {"recorded": self.metrics_recorded, "rebuilt": self.metrics_rebuilt},
            "timings": self.timings,
            "original_timings": self.original_timings,
        }


def row_differences(recorded: pl.DataFrame, rebuilt: pl.DataFrame,
                    key_columns: Sequence[str], limit: int = 5) -> str:
    """"2 rows only in the recorded snapshot (id=4, id=9), 1 only in the rebuild (id=4)"."""
    common = [c for c in recorded.columns if c in rebuilt.columns
              and recorded.schema[c] == rebuilt.schema[c]
              and not isinstance(recorded.schema[c], pl.List | pl.Struct | pl.Array)]
    if not common:
        return "no column in common"
    keys = [c for c in key_columns if c in common] or common[:2]

    def only(a: pl.DataFrame, b: pl.DataFrame) -> str:
        rows = a.select(common).join(b.select(common), on=common, how="anti", nulls_equal=True)
        shown = ", ".join(" ".join(f"{k}={v}" for k, v in row.items())
                          for row in rows.select(keys).head(limit).iter_rows(named=True))
        return f"{rows.height} ({shown})" if rows.height else "0"

    extra = sorted(set(recorded.columns) ^ set(rebuilt.columns))
    return (f"rows only in the recorded snapshot: {only(recorded, rebuilt)}; only in the "
            f"rebuild: {only(rebuilt, recorded)}"
            + (f"; columns in one but not the other: {', '.join(extra)}" if extra else ""))


def _with_erased(manifest: Manifest, name: str, erased: Mapping[str, Sequence[ContentSum]]
                 ) -> tuple[str | None, int | None]:
    """A rebuilt table's digest and rows with the erased rows' kept sums added back."""
    table = manifest.tables.get(name)
    if table is None:
        return None, None
    if not erased.get(name):
        return table.digest, table.rows
    got = digest_with_erased(
        TableDigest(table.rows, table.schema_digest, table.content_digest, table.digest),
        erased[name])
    return got.digest, got.rows


def compare_digests(lineage: RunLineage, manifest: Manifest,
                    rebuilt: SnapshotLike | None = None,
                    recorded: Callable[[], SnapshotLike | None] | None = None,
                    erased: Mapping[str, Sequence[ContentSum]] | None = None
                    ) -> dict[str, TableCheck]:
    """Per-table comparison; raises DigestMismatch naming every table that differs.

    With both snapshots at hand (the recorded one may since have been deleted), the
    message also shows which rows differ. `erased`: per table, the kept content sums of
    rows erasures removed (docs/erasure.md), added back before comparing.
    """
    checks = {}
    for name in lineage.tables:
        digest, rows = _with_erased(manifest, name, erased or {})
        checks[name] = TableCheck(name, lineage.table_digests[name], digest,
                                  lineage.table_rows.get(name, -1), rows)
    bad = [c for c in checks.values() if not c.match]
    if not bad:
        return checks
    original = recorded() if recorded is not None and rebuilt is not None else None
    lines = []
    for check in bad:
        lines.append(check.describe())
        if original is not None and rebuilt is not None and check.rebuilt_digest is not None:
            lines.append("    " + row_differences(
                original.table(check.table), rebuilt.table(check.table),
                manifest.tables[check.table].key_columns))
    raise DigestMismatch(
        f"rebuild of run {lineage.run_id} refused: the archive no longer yields the data "
        f"it was trained on ({len(bad)} of {len(checks)} tables differ):\n  "
        + "\n  ".join(lines)
        + "\nThe archive segments behind the cut were changed or lost; restore them from "
        "backup (`tidelog archive status` lists segments) before rebuilding",
        run_id=lineage.run_id, tables=[c.table for c in bad])


def _recorded_snapshot(provider: SnapshotProvider, settings: Settings, snapshot_id: str
                       ) -> SnapshotLike | None:
    try:
        return provider.open_snapshot(settings, snapshot_id)
    except TidelogError:
        return None  # deleted since: the digests alone must do


def check_recipe(lineage: RunLineage) -> Recipe:
    """The recipe at the recorded code version, or an error saying how to get it back."""
    if lineage.recipe_git_commit:
        how = (f"check out the recorded commit (`git checkout {lineage.recipe_git_commit} -- "
               f"<recipe file>` in its repository)")
    elif lineage.recipe_package_version:
        how = (f"install the recorded version {lineage.tags.get('tidelog.recipe.package')}"
               f"=={lineage.recipe_package_version}")
    else:
        how = "restore the recipe source file the run was trained with"
    try:
        recipe = load_recipe(lineage.recipe)
    except TrainingError as exc:
        raise TrainingError(f"{exc.message}. The run was trained with {lineage.recipe}: {how}",
                            run_id=lineage.run_id) from exc
    current = file_sha256(recipe.version.path) if recipe.version.path else None
    if lineage.recipe_sha256 and current != lineage.recipe_sha256:
        raise TrainingError(
            f"recipe {lineage.recipe} changed since run {lineage.run_id}: its source "
            f"{recipe.version.path} has sha256 {current}, the run recorded "
            f"{lineage.recipe_sha256}; {how}, then rebuild again", run_id=lineage.run_id)
    return recipe


def _own_digest_tags(manifest: Manifest) -> dict[str, str]:
    tags = {"tidelog.digest": manifest.digest}
    for name, table in manifest.tables.items():
        tags[f"tidelog.digest.{name}"] = table.digest
        tags[f"tidelog.rows.{name}"] = str(table.rows)
    return tags


def _changed_by_erasure(run_id: str, lineage: RunLineage, manifest: Manifest,
                        erasures: list[dict[str, Any]],
                        sums: Mapping[str, Sequence[ContentSum]]) -> DatasetErased:
    """The refusal to rebuild a run whose data an erasure changed, saying whether the rest
    of the data is still exactly what was recorded."""
    ids = ", ".join(e["id"] for e in erasures)
    named = "; ".join(f"{e['id']} ({e.get('table')}, {e.get('completed_at')}: "
                      f"{e.get('reason')})" for e in erasures)
    try:
        compare_digests(lineage, manifest, erased=sums)
        rest = ("every other row is exactly as recorded (the rebuilt digest plus the erased "
                "rows' kept contributions equals the recorded digest)")
        exact = True
    except DigestMismatch as exc:
        rest = f"and the remaining data differs from the record too: {exc.message}"
        exact = False
    return DatasetErased(
        f"rebuild of run {run_id}: dataset changed by erasure {ids} — {named}; {rest}. "
        f"Run `tidelog rebuild {run_id} --without-erased` to retrain on the recorded cut "
        "minus the erased subjects, as a new run linked to this one and to the erasure",
        run_id=run_id, erasures=[e["id"] for e in erasures], rest_exact=exact)


@traced("rebuild", describe_rebuild)
def rebuild(settings: Settings, run_id: str, *, provider: SnapshotProvider | None = None,
            experiment: str = DEFAULT_EXPERIMENT, workdir: Path | None = None,
            without_erased: bool = False) -> RebuildReport:
    """Rebuild a run. A run that an erasure changed is refused with DatasetErased unless
    `without_erased`: then the cut minus the erased subjects is checked against the
    recorded digests plus the erased rows' kept sums, and retrained as a new run linked
    to the original and to the erasures."""
    started = time.perf_counter()
    provider = provider or default_provider()
    tracking = connect(settings, experiment)
    run = tracking.get_run(run_id)
    lineage = tracking.lineage(run_id)
    recipe = check_recipe(lineage)
    snapshot_started = time.perf_counter()
    into = Path(tempfile.mkdtemp(prefix="tidelog-rebuild-", dir=workdir))
    try:
        # Topic names come from the run's own record, not from today's settings.
        recorded = dataclasses.replace(
            settings,
            topic_prefix=lineage.source.get("topic_prefix") or settings.topic_prefix,
            connector_name=lineage.source.get("connector") or settings.connector_name)
        try:
            manifest = provider.rebuild_snapshot(recorded, lineage.cut, lineage.tables, into)
        except DigestMismatch as exc:
            raise DigestMismatch(
                f"rebuild of run {run_id} refused: {exc.message}",
                **{**exc.details, "run_id": run_id}) from exc
        rebuilt = provider.open_rebuilt(manifest, into)
        erasures = erasures_of_run(settings, run_id)
        sums = erased_sums(erasures, run_id)
        if erasures and not without_erased:
            raise _changed_by_erasure(run_id, lineage, manifest, erasures, sums)
        checks = compare_digests(
            lineage, manifest, rebuilt,
            recorded=lambda: _recorded_snapshot(provider, settings, lineage.snapshot_id),
            erased=sums if without_erased else None)
        frames = read_tables(rebuilt)
        # Exactly the exclusion set the run recorded, not today's (added or removed since).
        exclusions = recorded_set(
            run_id, lineage.tags, lambda: tracking.read_text(run_id, EXCLUSIONS_ARTIFACT),
            ExclusionStore.for_settings(settings))
        texts: dict[str, str] = {}
        if exclusions is not None:
            frames, _ = apply_exclusions(frames, exclusions)
            texts[EXCLUSIONS_ARTIFACT] = exclusions.dumps()
        snapshot_done = time.perf_counter()
        result = run_recipe(recipe, frames, lineage.params, lineage.seed)
        predictions = predict(result.model, result.features)
        trained = time.perf_counter()
        predictions_sha = array_sha256(predictions)
        model_sha = model_sha256(result.model)
        tags = {**{k: v for k, v in lineage.tidelog_tags().items()
                   if not k.startswith(ERASURE_PREFIX)}, REBUILD_OF: run_id,
                "tidelog.predictions.sha256": predictions_sha, "tidelog.model.sha256": model_sha,
                "tidelog.rebuild.snapshot_id": manifest.id,
                "tidelog.rebuild.version": tidelog_version()}
        report_timings = {"snapshot": snapshot_done - snapshot_started,
                          "train": trained - snapshot_done}
        matches = {
            "dataset_match": True,
            "model_match": predictions_sha == lineage.tags.get("tidelog.predictions.sha256"),
            "artifact_match": model_sha == lineage.tags.get("tidelog.model.sha256"),
        }
        tags.update({f"tidelog.rebuild.{k}": str(v).lower() for k, v in matches.items()})
        if without_erased and erasures:
            # The new run's data is the cut minus the erased subjects: its own digests.
            tags.update(_own_digest_tags(manifest))
            tags["tidelog.rebuild.without_erased"] = ",".join(e["id"] for e in erasures)
            tags.update({erasure_tag(e["id"]): REBUILT_WITHOUT for e in erasures})
        logged = tracking.log_run(
            run_name=f"rebuild of {run_id}", params=lineage.params, seed=lineage.seed,
            result=result, predictions=predictions, tags=tags, manifest=manifest,
            tables=frames, timings=report_timings, texts=texts)
    finally:
        shutil.rmtree(into, ignore_errors=True)
    report_timings["total"] = time.perf_counter() - started
    tracking.log_metric(logged.run_id, "tidelog.total_seconds", report_timings["total"])
    metrics = run.data.metrics
    return RebuildReport(
        run_id=run_id, new_run_id=logged.run_id, snapshot_id=lineage.snapshot_id,
        rebuilt_snapshot_id=manifest.id, tables=checks, digest_recorded=lineage.digest,
        digest_rebuilt=manifest.digest,
        predictions_recorded=lineage.tags.get("tidelog.predictions.sha256", ""),
        predictions_rebuilt=predictions_sha,
        model_recorded=lineage.tags.get("tidelog.model.sha256", ""), model_rebuilt=model_sha,
        deterministic=lineage.tags.get("tidelog.model.deterministic", "true") == "true",
        metrics_recorded={k: v for k, v in metrics.items() if not k.startswith("tidelog.")},
        metrics_rebuilt=result.metrics, timings=report_timings,
        original_timings={k.removeprefix("tidelog.").removesuffix("_seconds"): v
                          for k, v in metrics.items() if k.startswith("tidelog.")})
