"""The core library as the API sees it: one object whose methods call cdc, snapshotter
and trainer, so routes and jobs stay thin and unit tests can swap in fakes.

`Core(settings, provider=FakeSnapshotProvider())` serves snapshots from the trainer's
in-memory fake; tests replace the other methods (verify, connector, ...) one by one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

from anyio import to_thread

from api.cache import LineageCache
from snapshotter.cut import Cut, parse_at
from snapshotter.manifest import Manifest
from tidelog.errors import CutError, TidelogError
from tidelog.redact import redact_url
from tidelog.settings import Settings
from trainer.provider import SnapshotProvider, default_provider
from trainer.tags import rebuild_summary
from trainer.tracking import DEFAULT_EXPERIMENT

__all__ = ["Core", "run_to_json", "cut_or_latest"]

_LOG = logging.getLogger(__name__)


def run_to_json(lineage: Any, rebuilds: list[Any]) -> dict[str, Any]:
    """A tidelog run's recorded lineage plus the verification result of each rebuild."""
    tags = lineage.tags
    own = {k.removeprefix("tidelog.rebuild."): tags[k] == "true" for k in tags
           if k in ("tidelog.rebuild.dataset_match", "tidelog.rebuild.model_match",
                    "tidelog.rebuild.artifact_match")}
    return {
        "run_id": lineage.run_id,
        "snapshot_id": lineage.snapshot_id,
        "cut": lineage.cut.to_json(),
        "window": lineage.cut.is_window,
        "digest": lineage.digest,
        "tables": {t: {"digest": lineage.table_digests[t], "rows": lineage.table_rows.get(t)}
                   for t in lineage.tables},
        "recipe": {"reference": lineage.recipe, "sha256": lineage.recipe_sha256,
                   "git_commit": lineage.recipe_git_commit,
                   "package_version": lineage.recipe_package_version},
        "params": lineage.params,
        "seed": lineage.seed,
        "exclusions": lineage.exclusions,
        "source": lineage.source,
        "rebuild_of": tags.get("tidelog.rebuild_of"),
        "verification": own or None,
        "predictions_sha256": tags.get("tidelog.predictions.sha256"),
        "model_sha256": tags.get("tidelog.model.sha256"),
        "rebuilds": [rebuild_summary(r) for r in rebuilds],
        "tags": lineage.tidelog_tags(),
    }


class Core:
    def __init__(self, settings: Settings, provider: SnapshotProvider | None = None,
                 lineage_ttl: float = 60.0) -> None:
        self.settings = settings
        self.provider = provider or default_provider()
        self.lineage_cache = LineageCache(self.lineage_fingerprint, max_age=lineage_ttl)
        # Archive catch-up is not safe to run twice at once against one archive root.
        self.archive_lock = threading.Lock()
        # MLflow's fluent API keeps process-global state; one training at a time.
        self.training_lock = threading.Lock()
        self._admin: Any = None
        self._admin_lock = threading.Lock()

    # -- snapshots --------------------------------------------------------------------

    def resolve_cut(self, tables: Sequence[str], at: str | Cut, *, allow_stale: bool = False
                    ) -> Cut:
        with self.archive_lock:
            return self.provider.resolve_cut(self.settings, list(tables), at,
                                             allow_stale=allow_stale)

    def create_snapshot(self, tables: Sequence[str], at: str | Cut) -> Manifest:
        return self.provider.create_snapshot(self.settings, list(tables), at)

    def list_snapshots(self) -> list[Manifest]:
        return self.provider.list_snapshots(self.settings)

    def manifest(self, snapshot_id: str) -> Manifest:
        return self.provider.open_snapshot(self.settings, snapshot_id).manifest

    def verify_archive(self) -> dict[str, Any]:
        from snapshotter.verify import verify_archive

        return verify_archive(self.settings).to_json()

    def verify_snapshot(self, snapshot_id: str, against_source: bool = False
                        ) -> dict[str, Any]:
        from snapshotter.verify import verify_snapshot

        return verify_snapshot(self.settings, snapshot_id,
                               against_source=against_source).to_json()

    def diff_snapshots(self, a: str, b: str, limit: int = 20) -> dict[str, Any]:
        from snapshotter.verify import diff_snapshots

        return diff_snapshots(self.settings, a, b, limit=limit).to_json()

    def models_using(self, snapshot_id: str) -> list[dict[str, str]]:
        from api.retention import registered_versions_using

        return registered_versions_using(self.settings, snapshot_id)

    def repair_catalog(self) -> None:
        """Make the DuckDB catalog agree with the manifests (after a crash, say); a
        failure is logged, not fatal: the snapshots themselves are intact."""
        from snapshotter.catalog import ensure_catalog

        try:
            ensure_catalog(self.settings)
        except TidelogError as exc:
            _LOG.warning("DuckDB catalog repair at startup failed: %s", exc.message)

    def delete_snapshot(self, snapshot_id: str, check: Callable[[], object] | None = None
                        ) -> None:
        """Delete the snapshot's files; `check` runs under its exclusive lock first."""
        from api.retention import delete_snapshot_files

        delete_snapshot_files(self.settings, snapshot_id, check)
        self.lineage_cache.clear()

    # -- training ---------------------------------------------------------------------

    def train(self, recipe: str, **kwargs: Any) -> dict[str, Any]:
        from trainer.train import train

        with self.training_lock:
            result = train(self.settings, recipe, provider=self.provider, **kwargs)
        self.lineage_cache.clear()
        return result.to_json()

    def rebuild(self, run_id: str, experiment: str = DEFAULT_EXPERIMENT,
                without_erased: bool = False) -> dict[str, Any]:
        from trainer.rebuild import rebuild

        with self.training_lock:
            report = rebuild(self.settings, run_id, provider=self.provider,
                             experiment=experiment, without_erased=without_erased)
        self.lineage_cache.clear()
        return report.to_json()

    def erase(self, table: str, key: Mapping[str, Any], reason: str, actor: str,
              dry_run: bool = False) -> dict[str, Any]:
        from trainer.erasure import erase

        # The training lock: no run reads a snapshot while its files are rewritten.
        with self.training_lock, self.archive_lock:
            report = erase(self.settings, table, key, reason, actor, dry_run=dry_run)
        self.lineage_cache.clear()  # cached row lineage may quote the erased rows
        return report.to_json()

    def erasures(self) -> dict[str, Any]:
        from trainer.erasure import list_erasures, verify_ledger

        return {**list_erasures(self.settings).to_json(),
                "chain": verify_ledger(self.settings).to_json()}

    def run_recipe_of(self, run_id: str, experiment: str = DEFAULT_EXPERIMENT) -> str:
        from trainer.tracking import connect

        return connect(self.settings, experiment).lineage(run_id).recipe

    def run(self, run_id: str, experiment: str = DEFAULT_EXPERIMENT) -> dict[str, Any]:
        from trainer.tags import REBUILD_OF
        from trainer.tracking import connect

        tracking = connect(self.settings, experiment)
        lineage = tracking.lineage(run_id)
        return run_to_json(lineage, tracking.runs_with_tag(REBUILD_OF, run_id))

    def model_lineage(self, name: str, version: int | None,
                      experiment: str = DEFAULT_EXPERIMENT) -> dict[str, Any]:
        from trainer.lineage import model_lineage

        return self.lineage_cache.get(
            ("model", name, version, experiment),
            lambda: model_lineage(self.settings, name, version, experiment=experiment
                                  ).to_json())

    def row_lineage(self, table: str, key: Mapping[str, Any],
                    experiment: str = DEFAULT_EXPERIMENT) -> dict[str, Any]:
        from trainer.lineage import row_lineage

        return self.lineage_cache.get(
            _row_cache_key(table, key, experiment),
            lambda: row_lineage(self.settings, table, dict(key), provider=self.provider,
                                experiment=experiment).to_json())

    # A cached answer is served on the event loop; only a miss takes a worker thread.
    async def model_lineage_async(self, name: str, version: int | None,
                                  experiment: str = DEFAULT_EXPERIMENT) -> dict[str, Any]:
        hit, value = self.lineage_cache.peek(("model", name, version, experiment))
        if hit:
            return dict(value)
        return await to_thread.run_sync(self.model_lineage, name, version, experiment)

    async def row_lineage_async(self, table: str, key: Mapping[str, Any],
                                experiment: str = DEFAULT_EXPERIMENT) -> dict[str, Any]:
        hit, value = self.lineage_cache.peek(_row_cache_key(table, key, experiment))
        if hit:
            return dict(value)
        return await to_thread.run_sync(self.row_lineage, table, key, experiment)

    def lineage_fingerprint(self) -> Hashable:
        """Changes whenever a lineage answer may: snapshots come or go, an MLflow run
        starts or ends, a model version is registered or changed. Four cheap calls."""
        from snapshotter.store import SnapshotStore
        from trainer.tracking import connect

        snapshots = frozenset(SnapshotStore.of(self.settings).ids())
        return snapshots, connect(self.settings).change_marks()

    # -- CDC --------------------------------------------------------------------------

    def connector_status(self, name: str) -> dict[str, Any]:
        from cdc.connector import connector_status

        return connector_status(self.settings, name)

    def connector_apply(self, name: str, tables: Sequence[str], topic_prefix: str,
                        timeout: float, replica_identity_full: bool = False
                        ) -> tuple[dict[str, Any], list[str]]:
        """The connector's status once streaming, and `connector apply`'s warnings."""
        from cdc.connector import ConnectorSpec, apply
        from cdc.source_setup import toast_warnings

        spec = ConnectorSpec(name, tuple(tables), topic_prefix)
        status = apply(self.settings, spec, timeout=timeout,
                       replica_identity_full=replica_identity_full)
        return status, toast_warnings(self.settings.require("postgres_dsn"), spec)

    def connector_restart(self, name: str, timeout: float) -> dict[str, Any]:
        from cdc.connector import ConnectorSpec, restart

        return restart(self.settings, ConnectorSpec(name, (), self.settings.topic_prefix),
                       timeout=timeout)

    def archive_status(self, lag: bool = True) -> dict[str, Any]:
        from snapshotter.archive import Archive

        rows = Archive(self.settings.archive_root).status()
        broker: dict[str, Any] = {"checked": False}
        ends: dict[tuple[str, int], int] = {}
        identities: dict[str, tuple[str, str]] = {}
        if lag and rows:
            try:
                ends, identities = self._broker_view(sorted({str(r["topic"]) for r in rows}),
                                                     [(str(r["topic"]), int(str(r["partition"])))
                                                      for r in rows])
                broker = {"checked": True}
            except TidelogError as exc:
                broker = {"checked": False, "error": exc.message}
        partitions = []
        for r in rows:
            topic, partition = str(r["topic"]), int(str(r["partition"]))
            identity = identities.get(topic)
            same_log = (None if identity is None
                        else identity == (r["cluster_id"], r["topic_id"]))
            end = ends.get((topic, partition))
            hwm = int(str(r["high_water_mark"]))
            partitions.append({
                **r,
                "log_identity": {"cluster_id": r["cluster_id"], "topic_id": r["topic_id"],
                                 "generation": r["generation"]},
                "broker_end_offset": end if same_log else None,
                "lag": max(0, end - hwm) if same_log and end is not None else None,
                "broker_log_identity": None if identity is None else
                {"cluster_id": identity[0], "topic_id": identity[1]},
                "same_log_as_broker": same_log,
            })
        return {"archive_root": redact_url(self.settings.archive_root), "broker": broker,
                "partitions": partitions}

    def _kafka_admin(self) -> Any:
        from tidelog.adapters.kafka import KafkaAdmin

        with self._admin_lock:
            if self._admin is None:
                self._admin = KafkaAdmin.for_settings(self.settings, timeout=5)
            return self._admin

    def _broker_view(self, topics: list[str], partitions: list[tuple[str, int]]
                     ) -> tuple[dict[tuple[str, int], int], dict[str, tuple[str, str]]]:
        """Log end offsets and log identities, as the broker reports them now. A topic
        deleted from the broker is left out: the archive still has it."""
        from cdc.reader import log_identity

        admin = self._kafka_admin()
        identities = {t: (i.cluster_id, i.topic_id) for t, i in log_identity(
            self.settings, topics, missing_ok=True, admin=admin).items()}
        ends = admin.end_offsets([(t, p) for t, p in partitions if t in identities])
        return ends, identities

    # -- health -----------------------------------------------------------------------

    def readiness(self) -> dict[str, dict[str, Any]]:
        from api.health import readiness

        return readiness(self.settings)


def _row_cache_key(table: str, key: Mapping[str, Any], experiment: str) -> Hashable:
    return ("row", table, tuple(sorted((k, repr(v)) for k, v in key.items())), experiment)


def cut_or_latest(at: Any) -> str | Cut:
    """"latest" or a Cut; the API takes a cut as a JSON object (never @FILE)."""
    if isinstance(at, str) and at.startswith("@"):
        raise CutError("a cut over HTTP is \"latest\" or a JSON object, not @FILE")
    found = parse_at(at)
    return found if isinstance(found, Cut) or found == "latest" else Cut.from_json(found)
