"""The MLflow tags that make a run rebuildable, and reading them back.

Every key starts with `tidelog.`; docs/trainer.md lists them. A run is "made by tidelog"
when it carries `tidelog.snapshot_id` and `tidelog.cut`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from snapshotter.cut import Cut
from snapshotter.manifest import Manifest, redacted_source
from tidelog.errors import CutError, TrainingError
from trainer.recipe import Params, RecipeVersion

__all__ = [
    "PREFIX",
    "SNAPSHOT_ID",
    "CUT",
    "REBUILD_OF",
    "MANIFEST_ARTIFACT",
    "RunLineage",
    "lineage_tags",
    "version_tags",
    "tag_json",
    "tidelog_version",
    "rebuild_verified",
    "rebuild_summary",
]

PREFIX = "tidelog."
SNAPSHOT_ID = "tidelog.snapshot_id"
CUT = "tidelog.cut"
REBUILD_OF = "tidelog.rebuild_of"
MANIFEST_ARTIFACT = "tidelog/manifest.json"
# MLflow truncates longer tag values; a cut that long lives in the manifest artefact.
MAX_TAG_VALUE = 8000
_IN_ARTIFACT = f"@artifact:{MANIFEST_ARTIFACT}"


def tag_json(value: Any) -> str:
    """The JSON text of a tag value (params, log identity). Not `cdc.values.canonical_json`,
    which makes row keys: this one must keep reading what earlier runs recorded (ASCII
    escapes, `str()` for anything else), so it never changes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def tidelog_version() -> str:
    import importlib.metadata

    import tidelog

    version = getattr(tidelog, "__version__", None)
    if version:
        return str(version)
    try:
        return importlib.metadata.version("tidelog")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def rebuild_verified(dataset_match: bool, model_match: bool, artifact_match: bool,
                     deterministic: bool) -> bool:
    """What "verified" means for a rebuild: same data, same predictions, and the same
    model bytes where the estimator promises it (RebuildReport and the API both ask)."""
    return dataset_match and model_match and (artifact_match or not deterministic)


def rebuild_summary(run: Any) -> dict[str, Any]:
    """A rebuild run as the run it rebuilt lists it, from the tags `rebuild` wrote."""
    tags = run.data.tags
    checks = {k: tags.get(f"{PREFIX}rebuild.{k}") == "true"
              for k in ("dataset_match", "model_match", "artifact_match")}
    deterministic = tags.get(f"{PREFIX}model.deterministic", "true") == "true"
    return {"run_id": run.info.run_id, "status": run.info.status,
            "start_time_ms": run.info.start_time,
            "rebuilt_snapshot_id": tags.get(f"{PREFIX}rebuild.snapshot_id"), **checks,
            "verified": rebuild_verified(checks["dataset_match"], checks["model_match"],
                                         checks["artifact_match"], deterministic)}


def _tp(topic: str, partition: int) -> str:
    return f"{topic}/{partition}"


# What a registered model version carries, so the registry alone names its data.
VERSION_TAGS = (SNAPSHOT_ID, CUT, "tidelog.cut.fingerprint", "tidelog.digest", "tidelog.tables",
                "tidelog.exclusions.id", "tidelog.exclusions.digest")


def version_tags(run_tags: Mapping[str, str]) -> dict[str, str]:
    return {k: run_tags[k] for k in VERSION_TAGS if k in run_tags}


def lineage_tags(manifest: Manifest, version: RecipeVersion, params: Params, seed: int,
                 since: str | None = None) -> dict[str, str]:
    cut = manifest.cut
    canonical = cut.canonical()
    tags = {
        "tidelog.version": tidelog_version(),
        SNAPSHOT_ID: manifest.id,
        CUT: canonical if len(canonical) <= MAX_TAG_VALUE else _IN_ARTIFACT,
        "tidelog.cut.fingerprint": cut.fingerprint(),
        "tidelog.cut.transaction_aligned": str(cut.transaction_aligned).lower(),
        "tidelog.window": str(cut.is_window).lower(),
        "tidelog.log_identity": tag_json(
            {_tp(p.topic, p.partition): {"cluster_id": p.cluster_id, "topic_id": p.topic_id}
             for p in cut.partitions}),
        "tidelog.digest": manifest.digest,
        "tidelog.tables": ",".join(sorted(manifest.tables)),
        "tidelog.recipe": version.reference,
        "tidelog.params": tag_json(params),
        "tidelog.seed": str(seed),
    }
    for p in cut.partitions:
        tags[f"tidelog.cut.start.{_tp(p.topic, p.partition)}"] = str(p.start)
        tags[f"tidelog.cut.end.{_tp(p.topic, p.partition)}"] = str(p.end)
    for name, table in manifest.tables.items():
        tags[f"tidelog.digest.{name}"] = table.digest
        tags[f"tidelog.rows.{name}"] = str(table.rows)
    if cut.lsn is not None:
        tags["tidelog.lsn"] = str(cut.lsn)
    if cut.commit_time_ms is not None:
        tags["tidelog.commit_time_ms"] = str(cut.commit_time_ms)
    for key, value in sorted(redacted_source(manifest.source).items()):
        if value not in (None, ""):
            tags[f"tidelog.source.{key}"] = str(value)
    for key, value in (("sha256", version.sha256), ("git_commit", version.git_commit),
                       ("git_status", version.git_status), ("path", version.path),
                       ("package", version.package),
                       ("package_version", version.package_version)):
        if value:
            tags[f"tidelog.recipe.{key}"] = value
    if since:
        tags["tidelog.since"] = since
    return tags


@dataclass(frozen=True)
class RunLineage:
    """What a tidelog run recorded, parsed back from its tags."""

    run_id: str
    snapshot_id: str
    cut: Cut
    digest: str
    table_digests: dict[str, str]
    table_rows: dict[str, int]
    recipe: str
    recipe_sha256: str | None
    recipe_git_commit: str | None
    recipe_package_version: str | None
    params: Params
    seed: int
    source: dict[str, str]
    tags: dict[str, str]

    @property
    def tables(self) -> list[str]:
        return sorted(self.table_digests)

    def tidelog_tags(self) -> dict[str, str]:
        return {k: v for k, v in self.tags.items() if k.startswith(PREFIX)}

    @property
    def exclusions(self) -> dict[str, Any] | None:
        """The exclusion set the run trained without (trainer/exclusions.py), or None."""
        if "tidelog.exclusions.id" not in self.tags:
            return None
        removed = "tidelog.exclusions.removed."
        return {"id": self.tags["tidelog.exclusions.id"],
                "digest": self.tags.get("tidelog.exclusions.digest", ""),
                "count": int(self.tags.get("tidelog.exclusions.count", "0")),
                "rows_removed": {k.removeprefix(removed): int(v) for k, v in self.tags.items()
                                 if k.startswith(removed)}}

    @classmethod
    def from_tags(cls, run_id: str, tags: Mapping[str, str],
                  read_manifest: Callable[[], str] | None = None) -> RunLineage:
        if SNAPSHOT_ID not in tags or CUT not in tags:
            raise TrainingError(
                f"run {run_id} was not made by tidelog (it has no {SNAPSHOT_ID} / {CUT} "
                "tags); only runs logged by `tidelog train` can be rebuilt or traced",
                run_id=run_id)
        try:
            if tags[CUT] == _IN_ARTIFACT:
                if read_manifest is None:
                    raise TrainingError(f"run {run_id} keeps its cut in {MANIFEST_ARTIFACT}")
                cut = Manifest.loads(read_manifest(), f"run {run_id} {MANIFEST_ARTIFACT}").cut
            else:
                cut = Cut.from_json(tags[CUT])
            cut = Cut(cut.partitions,
                      lsn=_int_or_none(tags.get("tidelog.lsn")),
                      commit_time_ms=_int_or_none(tags.get("tidelog.commit_time_ms")),
                      transaction_aligned=tags.get("tidelog.cut.transaction_aligned") == "true")
            params = json.loads(tags.get("tidelog.params", "{}"))
            seed = int(tags.get("tidelog.seed", "0"))
        except (CutError, ValueError, TypeError) as exc:
            raise TrainingError(
                f"run {run_id} has damaged tidelog tags ({exc}); it cannot be rebuilt — "
                "was a tidelog.* tag edited by hand?", run_id=run_id) from exc
        tables = [t for t in tags.get("tidelog.tables", "").split(",") if t]
        # Runs logged before every DSN form was redacted may hold a password in a tag.
        source = redacted_source({k.removeprefix("tidelog.source."): v
                                  for k, v in tags.items() if k.startswith("tidelog.source.")})
        tags = {**tags, **{f"tidelog.source.{k}": v for k, v in source.items()}}
        return cls(
            run_id=run_id,
            snapshot_id=tags[SNAPSHOT_ID],
            cut=cut,
            digest=tags.get("tidelog.digest", ""),
            table_digests={t: tags.get(f"tidelog.digest.{t}", "") for t in tables},
            table_rows={t: int(tags.get(f"tidelog.rows.{t}", "-1")) for t in tables},
            recipe=tags.get("tidelog.recipe", ""),
            recipe_sha256=tags.get("tidelog.recipe.sha256"),
            recipe_git_commit=tags.get("tidelog.recipe.git_commit"),
            recipe_package_version=tags.get("tidelog.recipe.package_version"),
            params=params,
            seed=seed,
            source=source,
            tags=dict(tags),
        )


def _int_or_none(value: str | None) -> int | None:
    return None if value is None or value == "" else int(value)
