"""Erasing one subject (a table and a key) from the archive and from every snapshot.

The steps, each safe to repeat, and what a crash between two of them leaves (named crash
points in tidelog/crashpoints.py; docs/erasure.md):

1. The journal `$TIDELOG_HOME/erasures/pending/<id>.json` is written first (it holds the
   raw key until the erasure completes, so a re-run can finish it).
2. Every archive segment holding an event of the key is rewritten without those events
   (`Archive.replace_segment`: old or new visible, never both) and verified.
3. Every snapshot holding a row (or a delete entry) of the key gets rewritten files under
   new names, then a new manifest (temp file + rename), then its old files are removed. The
   manifest keeps the recorded digest and adds the erased rows' content sum (`erased`).
4. The catalog is re-synced from the manifests (its views name files by path).

This module holds the storage part; trainer/erasure.py adds MLflow and the ledger.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cdc.columns import OFFSET, SALT
from cdc.values import canonical_json
from snapshotter.archive import Archive, Segment
from snapshotter.cut import Cut
from snapshotter.digest import ContentSum, content_sum
from snapshotter.layout import KEY, file_sha256, file_stat, sql_text, visible_sql
from snapshotter.layout import fsync as _fsync
from snapshotter.manifest import MANIFEST_NAME, ErasedRows, Manifest, TableManifest
from snapshotter.materialise import materialise
from snapshotter.storage import Storage
from snapshotter.store import SnapshotStore
from tidelog.crashpoints import crash_point
from tidelog.errors import ErasureError
from tidelog.settings import Settings
from tidelog.topics import table_topic

__all__ = ["Subject", "ErasureFiles", "Journal", "SegmentHit", "SnapshotHit",
           "find_segments", "find_snapshots", "subject_sum_at",
           "erase_segments", "erase_snapshots", "new_erasure_id", "write_atomically"]


def new_erasure_id() -> str:
    return f"er_{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class Subject:
    """What an erasure removes: every change event and row of `table` with this key."""

    table: str
    key: dict[str, Any]

    def __post_init__(self) -> None:
        if "." not in self.table or "/" in self.table or any(
                ord(c) < 32 or c == "\x7f" for c in self.table):
            raise ErasureError(f"table {self.table!r}: give it as schema.table, e.g. "
                               "public.customers (no control characters or '/')",
                               table=self.table)
        if not self.key:
            raise ErasureError('the key needs at least one column, e.g. --key \'{"id": 42}\'')

    @property
    def key_json(self) -> str:
        """The key as the archive's `__key` column holds it (canonical JSON)."""
        return canonical_json(self.key)


def write_atomically(path: Path, text: str) -> None:
    """Write `path` whole or not at all, durable once this returns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{uuid.uuid4().hex[:8]}-{path.name}"
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync(path.parent)


@dataclass(frozen=True)
class ErasureFiles:
    """Every path of the erasure records under `$TIDELOG_HOME/erasures`."""

    home: Path

    @property
    def directory(self) -> Path:
        return self.home / "erasures"

    @property
    def ledger(self) -> Path:
        return self.directory / "ledger.jsonl"

    @property
    def secret(self) -> Path:
        return self.directory / "secret"

    @property
    def pending(self) -> Path:
        return self.directory / "pending"

    def journal(self, erasure_id: str) -> Path:
        return self.pending / f"{erasure_id}.json"

    @property
    def lock(self) -> Path:
        return self.directory / ".lock"

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """One erasure at a time per home."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.lock, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def journals(self) -> list[Journal]:
        if not self.pending.exists():
            return []
        found = [Journal.from_json(json.loads(p.read_text()))
                 for p in sorted(self.pending.glob("er_*.json"))]
        return sorted(found, key=lambda j: j.requested_at)

    def save(self, journal: Journal) -> None:
        write_atomically(self.journal(journal.id), json.dumps(journal.to_json(), indent=2))

    def remove(self, journal: Journal) -> None:
        path = self.journal(journal.id)
        if path.exists():
            path.unlink()
            _fsync(path.parent)


@dataclass
class Journal:
    """An erasure in progress: what it was asked, and what its plan found to change."""

    id: str
    table: str
    key: dict[str, Any]
    reason: str
    actor: str
    requested_at: str
    segments: list[str] = field(default_factory=list)  # "topic[p] gN offsets a..b"
    snapshots: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> table sum
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    model_versions: list[dict[str, str]] = field(default_factory=list)
    done: list[str] = field(default_factory=list)

    @property
    def subject(self) -> Subject:
        return Subject(self.table, self.key)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Journal:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


# -- the archive -------------------------------------------------------------------------

@dataclass(frozen=True)
class SegmentHit:
    segment: Segment
    events: int

    def describe(self) -> str:
        s = self.segment
        return (f"{s.topic}[{s.partition}] g{s.generation} offsets {s.start}..{s.end - 1}"
                f" ({self.events} event{'s' if self.events != 1 else ''})")


def _partitions(archive: Archive, topic: str) -> list[tuple[int, int]]:
    found: list[tuple[int, int]] = []
    for name in archive.storage.listdir(archive.storage.path(topic)):
        if name.startswith("p") and name[1:].isdigit():
            found.extend((int(name[1:]), g.number)
                         for g in archive.generations(topic, int(name[1:])))
    return found


def _has_key(path: str, key_json: str, storage: Storage | None = None) -> int:
    """Events (or rows) of the key in one Parquet file, local or in `storage`."""
    frame = storage.scan(path) if storage is not None else pl.scan_parquet(path)
    if KEY not in frame.collect_schema():
        return 0
    return int(frame.filter(pl.col(KEY) == key_json).select(pl.len()).collect().item())


def find_segments(settings: Settings, subject: Subject,
                  archive: Archive | None = None) -> list[SegmentHit]:
    """Segments of every generation holding a change event with the subject's key."""
    archive = archive or Archive(settings.archive_root)
    topic = table_topic(settings.topic_prefix, subject.table)
    hits = []
    for partition, generation in _partitions(archive, topic):
        segments = archive.segments(topic, partition, generation)
        archive.verify(segments)  # never rewrite (and so bless) altered history
        for seg in segments:
            count = _has_key(seg.path, subject.key_json, archive.storage)
            if count:
                hits.append(SegmentHit(seg, count))
    return hits


def subject_sum_at(settings: Settings, subject: Subject, hits: Sequence[SegmentHit],
                   cut: Cut, columns: Sequence[tuple[str, str]] | None, scratch: Path
                   ) -> ContentSum | None:
    """The content sum of the subject's row in the table state at `cut` (None: no row),
    from the archive: what the row added to the digest of a dataset at that cut."""
    topic = table_topic(settings.topic_prefix, subject.table)
    storage = Archive(settings.archive_root).storage
    frames = []
    for p in (p for p in cut.partitions if p.topic == topic):
        for hit in hits:
            seg = hit.segment
            if seg.partition != p.partition or seg.end <= p.start or seg.start >= p.end:
                continue
            frames.append(storage.scan(seg.path)
                          .filter((pl.col(KEY) == subject.key_json)
                                  & (pl.col(OFFSET) >= p.start)
                                  & (pl.col(OFFSET) < p.end)))
    if not frames:
        return None
    state = materialise(frames, keep_key=True)
    if state.height == 0:
        return None
    scratch.mkdir(parents=True, exist_ok=True)
    path = scratch / f"subject-{uuid.uuid4().hex[:8]}.parquet"
    state.write_parquet(path)
    try:
        relation = f"(select * exclude ({KEY}) from read_parquet({sql_text(str(path))}))"
        con = duckdb.connect()
        if columns is None:
            described = con.execute(f"describe select * from {relation}").fetchall()
            columns = [(str(r[0]), str(r[1])) for r in described if r[0] != SALT]
        return content_sum(con, relation, columns)
    finally:
        path.unlink(missing_ok=True)


def _without_key(table: pa.Table, key_json: str) -> pa.Table:
    match = pc.fill_null(pc.equal(table.column(KEY), key_json), False)
    return table.filter(pc.invert(match))


def erase_segments(settings: Settings, subject: Subject) -> list[str]:
    """Rewrite every segment holding the subject's events; the descriptions of the
    segments rewritten. Holds the archive's writer lock (no archiver appends meanwhile)."""
    archive = Archive(settings.archive_root)
    topic = table_topic(settings.topic_prefix, subject.table)
    done = []
    with archive.writer_lock():
        for partition, generation in _partitions(archive, topic):
            archive.finish_replacements(topic, partition, generation)
            archive.storage.remove_temporaries(
                archive._generation_dir(topic, partition, generation))
        for hit in find_segments(settings, subject, archive):
            table = pq.read_table(hit.segment.path, filesystem=archive.storage.fs)
            new = archive.replace_segment(hit.segment,
                                          _without_key(table, subject.key_json))
            archive.verify([new])
            done.append(hit.describe())
    return done


# -- snapshots ---------------------------------------------------------------------------

@dataclass(frozen=True)
class SnapshotHit:
    snapshot_id: str
    table: str
    rows: int  # visible rows of the subject
    content: ContentSum | None  # their content sum (None when no row is visible)
    files: tuple[str, ...]  # files holding the key (data, delete or delta files)

    def to_json(self) -> dict[str, Any]:
        return {"table": self.table, "rows": self.rows,
                "content_digest": self.content.hex if self.content else None,
                "files": list(self.files)}


def _snapshot_hit(directory: Path, manifest: Manifest, subject: Subject
                  ) -> SnapshotHit | None:
    table = manifest.tables.get(subject.table)
    if table is None:
        return None
    files = tuple(f for f in table.all_files if _has_key(str(directory / f), subject.key_json))
    if not files:
        return None
    con = duckdb.connect()
    visible = visible_sql(directory, table, with_key=True, with_salt=True)
    relation = (f"(select * exclude ({KEY}) from {visible}"
                f" v where v.{KEY} = {sql_text(subject.key_json)})")
    found = content_sum(con, relation, table.columns)
    return SnapshotHit(manifest.id, subject.table, found.rows,
                       found if found.rows else None, files)


def find_snapshots(settings: Settings, subject: Subject) -> list[SnapshotHit]:
    """Every published snapshot with a row or a delete entry of the subject."""
    store = SnapshotStore.of(settings)
    hits = []
    for manifest in store.manifests():
        hit = _snapshot_hit(store.path(manifest.id), manifest, subject)
        if hit is not None:
            hits.append(hit)
    return hits


def _erased_name(name: str, erasure_id: str) -> str:
    stem = name.removesuffix(".parquet")
    if "~er_" in stem:
        stem = stem.split("~er_", 1)[0]
    return f"{stem}~{erasure_id}.parquet"


def _rewrite_snapshot(directory: Path, erasure_id: str, subject: Subject) -> bool:
    manifest = Manifest.loads((directory / MANIFEST_NAME).read_text())
    table = manifest.tables.get(subject.table)
    if table is None:
        return False
    table_dir = directory / subject.table
    if any(e.erasure == erasure_id for e in table.erased):
        _remove_unlisted(table_dir, directory, table)  # a crash after the manifest
        return True
    hit = _snapshot_hit(directory, manifest, subject)
    if hit is None:
        return False
    renamed: dict[str, str] = {}
    for name in hit.files:
        new_name = _erased_name(name, erasure_id)
        rows = pl.read_parquet(directory / name)
        kept = rows.filter(pl.col(KEY).ne_missing(pl.lit(subject.key_json)))
        tmp = directory / f".tmp-{uuid.uuid4().hex[:8]}.parquet"
        kept.write_parquet(tmp, compression="zstd", statistics=True)
        _fsync(tmp)
        os.replace(tmp, directory / new_name)
        renamed[name] = new_name
    _fsync(table_dir)
    crash_point("erasure.snapshot_files_written")

    def rename(names: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(renamed.get(n, n) for n in names)

    files = (*rename(table.files), *rename(table.delete_files), *rename(table.delta_files))
    checksums = {n: table.checksums.get(n) or file_sha256(directory / n) for n in files
                 if n not in renamed.values()}
    checksums.update({n: file_sha256(directory / n) for n in renamed.values()})
    erased = ErasedRows(erasure_id, hit.rows, (hit.content or ContentSum(0, 0, 0)).hex)
    new_table = dataclasses.replace(
        table, files=rename(table.files), delete_files=rename(table.delete_files),
        delta_files=rename(table.delta_files), checksums=checksums,
        file_stats={n: file_stat(directory / n) for n in files},
        erased=(*table.erased, erased))
    new_manifest = dataclasses.replace(
        manifest, tables={**manifest.tables, subject.table: new_table})
    write_atomically(directory / MANIFEST_NAME, new_manifest.dumps())
    crash_point("erasure.snapshot_manifest_replaced")
    _remove_unlisted(table_dir, directory, new_table)
    return True


def _remove_unlisted(table_dir: Path, directory: Path, table: TableManifest) -> None:
    """Files of the table's directory that its manifest no longer lists (the pre-erasure
    copies); the files of other snapshots they were hard-linked with stay."""
    listed = {str(directory / n) for n in table.all_files}
    for path in table_dir.glob("*.parquet"):
        if str(path) not in listed:
            path.unlink()
    for path in directory.glob(".tmp-*.parquet"):
        path.unlink()
    _fsync(table_dir)


def erase_snapshots(settings: Settings, erasure_id: str, subject: Subject) -> list[str]:
    """Rewrite every snapshot holding the subject; the ids of those rewritten."""
    store = SnapshotStore.of(settings)
    store.remove_abandoned_builds()  # a killed build's files may hold the subject too
    done = []
    for sid in store.ids():
        with store.exclusive(sid):  # no build of it, nor on it as a base, meanwhile
            store.restore_replaced(sid)
            if _rewrite_snapshot(store.path(sid), erasure_id, subject):
                done.append(sid)
    return done
