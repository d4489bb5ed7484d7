"""An in-memory stand-in for the snapshotter, for unit tests of the trainer.

`FakeSnapshotProvider` keeps, per table, the list of states the table went through (one
"change event" per state, so a topic's end offset is the number of states). Snapshots
are written as Parquet + `manifest.json` under `settings.snapshot_root`, like the real
ones, with an order-free digest computed from polars frames (`frame_digest`; not the
snapshotter's digest, which tests must not compare against).

Switches that inject failures: `tamper(table)` makes `rebuild_snapshot` lose the table's
last row (an archived segment changed), `fail_rebuild` / `fail_create` raise the given
exception.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from snapshotter.cut import Cut, PartitionCut
from snapshotter.layout import file_sha256, file_stat
from snapshotter.manifest import MANIFEST_NAME, Manifest, TableManifest
from snapshotter.snapshots import Snapshot
from tidelog.errors import CutError, SnapshotNotFound
from tidelog.settings import Settings
from tidelog.topics import table_topic

__all__ = ["FakeSnapshotProvider", "frame_digest"]

_T0_MS = 1_700_000_000_000


def frame_digest(frame: pl.DataFrame) -> str:
    """Order-free content digest: column names and types plus the sorted set of rows."""
    columns = sorted(frame.columns)
    ordered = frame.select(columns)
    header = json.dumps([[c, str(ordered.schema[c])] for c in columns])
    lines = sorted(ordered.write_ndjson().splitlines()) if ordered.height else []
    return hashlib.sha256("\n".join([header, *lines]).encode()).hexdigest()


def _overall(digests: dict[str, str]) -> str:
    body = "\n".join(f"{name}:{digest}" for name, digest in sorted(digests.items()))
    return hashlib.sha256(body.encode()).hexdigest()


@dataclass
class _Change:
    state: pl.DataFrame
    lsn: int
    ts_ms: int


class FakeSnapshotProvider:
    def __init__(self, *, topic_prefix: str = "tidelog", cluster_id: str = "fake-cluster",
                 connector: str = "fake-connector", database: str = "postgresql://fake/db"
                 ) -> None:
        self.topic_prefix = topic_prefix
        self.cluster_id = cluster_id
        self.source = {"topic_prefix": topic_prefix, "connector": connector,
                       "database": database}
        self._log: dict[str, list[_Change]] = {}
        self._keys: dict[str, tuple[str, ...]] = {}
        self._topic_ids: dict[str, str] = {}
        self._seq = 0
        self.tampered: set[str] = set()
        self.fail_rebuild: Exception | None = None
        self.fail_create: Exception | None = None
        self.calls: list[str] = []

    # -- driving the fake source --------------------------------------------------

    def put(self, table: str, frame: pl.DataFrame, key_columns: Sequence[str] = ("id",)
            ) -> None:
        """The table's next state (one change event on its topic)."""
        self._seq += 1
        self._keys.setdefault(table, tuple(key_columns))
        self._topic_ids.setdefault(table, uuid.uuid4().hex)
        self._log.setdefault(table, []).append(
            _Change(frame.clone(), lsn=1000 * self._seq, ts_ms=_T0_MS + 1000 * self._seq))

    def change(self, table: str, fn: Callable[[pl.DataFrame], pl.DataFrame]) -> None:
        self.put(table, fn(self.current(table)), self._keys[table])

    def current(self, table: str) -> pl.DataFrame:
        return self._log[table][-1].state.clone()

    def recreate_topic(self, table: str) -> None:
        """The topic is deleted and created again: a new log whose offsets restart at 0."""
        state = self.current(table)
        self._log[table] = []
        self._topic_ids[table] = uuid.uuid4().hex
        self.put(table, state, self._keys[table])

    def tamper(self, table: str) -> None:
        self.tampered.add(table)

    # -- SnapshotProvider ---------------------------------------------------------

    def _topic(self, table: str) -> str:
        return table_topic(self.topic_prefix, table)

    def resolve_cut(self, settings: Settings, tables: Sequence[str], at: str | Cut, *,
                    allow_stale: bool = False) -> Cut:
        for table in tables:
            if table not in self._log:
                raise CutError(f"unknown table {table}; the fake knows {sorted(self._log)}")
        if at == "latest":
            parts = tuple(PartitionCut(self._topic(t), 0, end=len(self._log[t]),
                                       cluster_id=self.cluster_id, topic_id=self._topic_ids[t])
                          for t in sorted(tables))
        else:
            cut = at if isinstance(at, Cut) else Cut.from_json(at)
            by_topic = {p.topic: p for p in cut.partitions}
            chosen: list[PartitionCut] = []
            for t in sorted(tables):
                p = by_topic.get(self._topic(t))
                if p is None:
                    raise CutError(f"the cut has no offsets for {self._topic(t)}")
                if (p.cluster_id, p.topic_id) != (self.cluster_id, self._topic_ids[t]):
                    raise CutError(f"the cut names {p.topic} in another log; it cannot be served")
                if p.end > len(self._log[t]):
                    raise CutError(f"cut end {p.end} of {p.topic} is beyond the archive")
                chosen.append(p)
            parts = tuple(chosen)
        changes = [self._log[t][p.end - 1] for t, p in zip(sorted(tables), parts, strict=True)
                   if p.end]
        return Cut(parts, lsn=max((c.lsn for c in changes), default=None),
                   commit_time_ms=max((c.ts_ms for c in changes), default=None),
                   transaction_aligned=True)

    def _materialise(self, table: str, p: PartitionCut) -> pl.DataFrame:
        log = self._log[table]
        state = log[p.end - 1].state if p.end else log[0].state.clear()
        if p.start:
            before = log[p.start - 1].state
            state = state.join(before, on=state.columns, how="anti", nulls_equal=True)
        return state

    def _build(self, cut: Cut, tables: Sequence[str], directory: Path, tamper: bool
               ) -> Manifest:
        directory.mkdir(parents=True, exist_ok=True)
        by_topic = {p.topic: p for p in cut.partitions}
        manifests = {}
        for table in sorted(tables):
            frame = self._materialise(table, by_topic[self._topic(table)])
            if tamper and table in self.tampered and frame.height:
                frame = frame.head(frame.height - 1)
            file_name = f"{table}.parquet"
            frame.write_parquet(directory / file_name)
            manifests[table] = TableManifest(
                name=table, topic=self._topic(table), rows=frame.height,
                columns=tuple((c, str(t)) for c, t in frame.schema.items()),
                key_columns=self._keys[table], digest=frame_digest(frame), files=(file_name,),
                # as the real builder records them: readers check the files against these
                checksums={file_name: file_sha256(directory / file_name)},
                file_stats={file_name: file_stat(directory / file_name)})
        manifest = Manifest(
            id=directory.name, cut=cut, tables=manifests,
            digest=_overall({k: v.digest for k, v in manifests.items()}),
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
            tidelog_version="fake", built_from="full", source=dict(self.source))
        (directory / MANIFEST_NAME).write_text(manifest.dumps())
        return manifest

    @staticmethod
    def snapshot_id(cut: Cut, tables: Sequence[str]) -> str:
        body = json.dumps({"cut": cut.canonical(), "tables": sorted(tables)})
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    def create_snapshot(self, settings: Settings, tables: Sequence[str],
                        at: str | Cut = "latest") -> Manifest:
        self.calls.append("create_snapshot")
        if self.fail_create is not None:
            raise self.fail_create
        cut = self.resolve_cut(settings, tables, at)
        directory = Path(settings.snapshot_root) / self.snapshot_id(cut, tables)
        if (directory / MANIFEST_NAME).exists():
            return self.open_snapshot(settings, directory.name).manifest
        return self._build(cut, tables, directory, tamper=False)

    def open_snapshot(self, settings: Settings, snapshot_id: str) -> Snapshot:
        self.calls.append("open_snapshot")
        path = Path(settings.snapshot_root) / snapshot_id
        if not (path / MANIFEST_NAME).exists():
            raise SnapshotNotFound(f"no snapshot {snapshot_id!r} under {path.parent}",
                                   snapshot_id=snapshot_id)
        return Snapshot(Manifest.loads((path / MANIFEST_NAME).read_text()), path)

    def rebuild_snapshot(self, settings: Settings, cut: Cut, tables: Sequence[str],
                         into: Path) -> Manifest:
        self.calls.append("rebuild_snapshot")
        if self.fail_rebuild is not None:
            raise self.fail_rebuild
        cut = self.resolve_cut(settings, tables, cut)
        return self._build(cut, tables, into / self.snapshot_id(cut, tables), tamper=True)

    def open_rebuilt(self, manifest: Manifest, into: Path) -> Snapshot:
        return Snapshot(manifest, into / manifest.id)

    def list_snapshots(self, settings: Settings) -> list[Manifest]:
        root = Path(settings.snapshot_root)
        if not root.exists():
            return []
        manifests = [Manifest.loads(p.read_text()) for p in root.glob(f"*/{MANIFEST_NAME}")]
        return sorted(manifests, key=lambda m: (m.created_at, m.id))
