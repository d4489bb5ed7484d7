"""The change-log archive: Parquet segments addressed by (log, topic, partition, offsets).

Layout under the archive root:

    <topic>/p<partition>/log.json                         generations of this partition's log
    <topic>/p<partition>/g<N>/<start>-<end>.parquet       a contiguous offset range [start, end)
    <topic>/p<partition>/failure.json                     a change event that cannot be decoded

The archive's own high-water mark is the largest segment end of the current generation:
resume reads from there, never from consumer-group commits, so a crash at any moment is
followed by neither a duplicate nor a gap. A changed log identity (topic recreated, new
cluster, restarted local broker) opens a new generation; offsets never mix across them.

A change event that cannot be decoded (a poison message) stops only its own partition, at
that offset: everything before it is archived, nothing after it is, and the failure is
recorded in `failure.json` (topic, partition, offset, column, value, error) until a later
run decodes past it. Other partitions and topics keep archiving. Nothing is skipped.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import io
import json
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from cdc.columns import OFFSET, PARTITION
from cdc.reader import (
    LogIdentity,
)
from snapshotter.poison import (
    PartitionFailure,
    poison_error,
)
from snapshotter.storage import Storage
from tidelog.crashpoints import crash_point
from tidelog.errors import ArchiveError, LogIdentityError

__all__ = [
    "TRANSACTION_SCHEMA",
    "Generation",
    "Segment",
    "PartitionFailure",
    "Archive",
    "damaged_segment_error",
    "poison_error",
]

# <start>-<end>-<first 16 hex of the file's sha256>.parquet: the name commits the range
# and the content together, so a changed file is detected and named.
SEGMENT_RE = re.compile(r"^(\d{20})-(\d{20})-([0-9a-f]{16})\.parquet$")

# Per generation directory: segment name -> [size, mtime_ns] at the time its bytes were
# last found to match the checksum in its name. A read rehashes a segment only when its
# stat differs from the mark (docs/archive.md "Segment checksums").
VERIFIED_NAME = ".verified.json"
# A file modified again within the filesystem's timestamp granularity after being hashed
# would keep the marked mtime ("racy git"): segments this young are hashed on every read
# and never marked, so any later rewrite necessarily changes the mtime.
RACY_SECONDS = 2.0
# Per generation directory: old segment name -> the name of its rewrite, while an erasure
# replaces the segment (docs/erasure.md). Written before the rewrite appears; a listed old
# name is hidden once its rewrite exists, so a reader sees one file per range, old or new.
SUPERSEDED_NAME = ".superseded.json"


@dataclass(frozen=True)
class Generation:
    number: int
    cluster_id: str
    topic_id: str
    first_offset: int

    @property
    def identity(self) -> LogIdentity:
        return LogIdentity(self.cluster_id, self.topic_id)

    def to_json(self) -> dict[str, object]:
        return {"generation": self.number, "cluster_id": self.cluster_id,
                "topic_id": self.topic_id, "first_offset": self.first_offset}


@dataclass(frozen=True)
class Segment:
    topic: str
    partition: int
    generation: int
    start: int
    end: int  # exclusive
    path: str
    checksum: str = ""


class Archive:
    def __init__(self, root: str) -> None:
        self.root = root
        self.storage = Storage.open(root)
        # path -> (size, mtime_ns) of segments this instance found marked or marked itself
        self._trusted: dict[str, tuple[int, int]] = {}

    # -- generations -----------------------------------------------------------------
    def _partition_dir(self, topic: str, partition: int) -> str:
        return self.storage.path(topic, f"p{partition}")

    def generations(self, topic: str, partition: int) -> list[Generation]:
        path = f"{self._partition_dir(topic, partition)}/log.json"
        if not self.storage.exists(path):
            return []
        data = json.loads(self.storage.read_bytes(path))
        return [Generation(g["generation"], g["cluster_id"], g["topic_id"],
                           g.get("first_offset", 0)) for g in data["generations"]]

    def generation_for(self, topic: str, partition: int, identity: LogIdentity
                       ) -> Generation | None:
        for g in self.generations(topic, partition):
            if g.identity == identity:
                return g
        return None

    def open_generation(self, topic: str, partition: int, identity: LogIdentity,
                        first_offset: int = 0) -> Generation:
        """The generation for `identity`, appending a new one if the log changed."""
        gens = self.generations(topic, partition)
        for g in gens:
            if g.identity == identity:
                if g is not gens[-1]:
                    raise LogIdentityError(
                        f"{topic}[{partition}] is back on log {identity} (generation "
                        f"{g.number}) after a newer generation {gens[-1].number}; refusing to "
                        "interleave two logs. Check which cluster TIDELOG_BOOTSTRAP_SERVERS "
                        "points at."
                    )
                return g
        new = Generation(len(gens), identity.cluster_id, identity.topic_id, first_offset)
        body = {"topic": topic, "partition": partition,
                "generations": [g.to_json() for g in [*gens, new]]}
        self.storage.write_bytes(f"{self._partition_dir(topic, partition)}/log.json",
                                 json.dumps(body, indent=2).encode(),
                                 step="archive.log_before_rename")
        crash_point("archive.after_generation")
        return new

    @contextmanager
    def writer_lock(self) -> Iterator[None]:
        if not self.storage.local:
            yield
            return
        self.storage.makedirs(self.storage.base)
        with open(f"{self.storage.base}/.writer.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # -- segments --------------------------------------------------------------------
    def _generation_dir(self, topic: str, partition: int, generation: int) -> str:
        return f"{self._partition_dir(topic, partition)}/g{generation}"

    def segments(self, topic: str, partition: int, generation: int) -> list[Segment]:
        directory = self._generation_dir(topic, partition, generation)
        result = []
        names = self.storage.listdir(directory)
        superseded = self._superseded(directory) if SUPERSEDED_NAME in names else {}
        present = set(names)
        for name in names:
            match = SEGMENT_RE.match(name)
            if match and superseded.get(name) not in present:
                result.append(Segment(topic, partition, generation, int(match[1]),
                                      int(match[2]), f"{directory}/{name}", match[3]))
        result.sort(key=lambda s: s.start)
        return result

    def high_water_mark(self, topic: str, partition: int, generation: Generation) -> int:
        segs = self.segments(topic, partition, generation.number)
        return segs[-1].end if segs else generation.first_offset

    def write_segment(self, topic: str, partition: int, generation: int, start: int,
                      end: int, table: pa.Table) -> Segment:
        directory = self._generation_dir(topic, partition, generation)
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        data = buf.getvalue()
        checksum = hashlib.sha256(data).hexdigest()[:16]
        path = f"{directory}/{start:020d}-{end:020d}-{checksum}.parquet"
        self.storage.write_bytes(path, data, step="archive.segment_before_rename")
        crash_point("archive.after_segment")
        return Segment(topic, partition, generation, start, end, path, checksum)

    def _superseded(self, directory: str) -> dict[str, str]:
        path = f"{directory}/{SUPERSEDED_NAME}"
        if not self.storage.exists(path):
            return {}
        found = json.loads(self.storage.read_bytes(path))
        return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}

    def _save_superseded(self, directory: str, superseded: dict[str, str]) -> None:
        path = f"{directory}/{SUPERSEDED_NAME}"
        if superseded:
            self.storage.write_bytes(path, json.dumps(superseded, sort_keys=True).encode())
        elif self.storage.exists(path):
            self.storage.fs.delete_file(path)

    def replace_segment(self, seg: Segment, table: pa.Table) -> Segment:
        """Rewrite `seg` as `table` (the same offset range) under a new content-addressed
        name: record old -> new, write the new file, remove the old one, drop the record.
        A crash leaves the old segment visible or the new one, never both
        (`SUPERSEDED_NAME`); `finish_replacements` completes an interrupted one."""
        directory = self._generation_dir(seg.topic, seg.partition, seg.generation)
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        data = buf.getvalue()
        checksum = hashlib.sha256(data).hexdigest()[:16]
        old_name = seg.path.rsplit("/", 1)[1]
        new_name = f"{seg.start:020d}-{seg.end:020d}-{checksum}.parquet"
        new = Segment(seg.topic, seg.partition, seg.generation, seg.start, seg.end,
                      f"{directory}/{new_name}", checksum)
        if new_name == old_name:
            return new
        superseded = self._superseded(directory)
        superseded[old_name] = new_name
        self._save_superseded(directory, superseded)
        self.storage.write_bytes(new.path, data)
        crash_point("erasure.segment_written")
        self.finish_replacements(seg.topic, seg.partition, seg.generation)
        return new

    def finish_replacements(self, topic: str, partition: int, generation: int) -> None:
        """Remove segments whose rewrite is in place, and their superseded records and
        verified marks (the old names carry the old content's checksum)."""
        directory = self._generation_dir(topic, partition, generation)
        superseded = self._superseded(directory)
        if not superseded:
            return
        present = set(self.storage.listdir(directory))
        for old_name, new_name in list(superseded.items()):
            if new_name not in present:
                if old_name in present:
                    continue  # the rewrite never appeared: the old segment stays current
            elif old_name in present:
                self.storage.fs.delete_file(f"{directory}/{old_name}")
            del superseded[old_name]
        marks = self._marks(directory)
        stale = [name for name in marks if name not in superseded and
                 name not in set(self.storage.listdir(directory))]
        if stale:
            for name in stale:
                del marks[name]
            self.storage.write_bytes(f"{directory}/{VERIFIED_NAME}",
                                     json.dumps(marks, sort_keys=True).encode())
        self._save_superseded(directory, superseded)

    def damaged(self, segments: Iterable[Segment]) -> list[Segment]:
        """Segments whose bytes no longer match the checksum in their name (a full rehash,
        ignoring verified marks)."""
        return [seg for seg in segments if not self._matches(seg)]

    def _matches(self, seg: Segment) -> bool:
        digest = hashlib.sha256()
        try:
            with self.storage.fs.open_input_stream(seg.path) as src:
                while chunk := src.read(1 << 22):
                    digest.update(chunk)
        except (OSError, pa.ArrowException):
            return False
        return digest.hexdigest()[:16] == seg.checksum

    def _stat(self, path: str) -> tuple[int, int] | None:
        info = self.storage.fs.get_file_info(path)
        if info.type != pafs.FileType.File or info.size is None or info.mtime_ns is None:
            return None
        return int(info.size), int(info.mtime_ns)

    def _marks(self, directory: str) -> dict[str, list[int]]:
        path = f"{directory}/{VERIFIED_NAME}"
        try:
            marks = json.loads(self.storage.read_bytes(path))
        except (OSError, pa.ArrowException, ValueError):
            return {}  # none yet, or unreadable: every segment is simply rehashed
        return marks if isinstance(marks, dict) else {}

    def verify(self, segments: Sequence[Segment]) -> None:
        """Refuse with ArchiveError unless every segment's bytes match its checksum.

        A segment whose size and mtime_ns equal its verified mark is trusted without
        rehashing; any other is hashed in full and, when it matches and is not too young
        (RACY_SECONDS), marked. A rewrite that keeps the size and forges the mtime is not
        caught here: `tidelog archive verify` rehashes everything.
        """
        by_directory: dict[str, list[Segment]] = {}
        for seg in segments:
            by_directory.setdefault(seg.path.rsplit("/", 1)[0], []).append(seg)
        for directory, segs in by_directory.items():
            stats = {seg.path: self._stat(seg.path) for seg in segs}
            if all(stat is not None and self._trusted.get(path) == stat
                   for path, stat in stats.items()):
                continue
            marks = self._marks(directory)
            fresh: dict[str, list[int]] = {}
            for seg in segs:
                name = seg.path.rsplit("/", 1)[1]
                stat = stats[seg.path]
                if stat is not None and marks.get(name) == list(stat):
                    self._trusted[seg.path] = stat
                    continue
                if stat is None or not self._matches(seg):
                    raise damaged_segment_error(seg, self.root)
                after = self._stat(seg.path)
                if after == stat and stat[1] < (time.time() - RACY_SECONDS) * 1e9:
                    fresh[name] = list(stat)
                    self._trusted[seg.path] = stat
            if fresh:
                self._save_marks(directory, fresh)

    def _save_marks(self, directory: str, fresh: dict[str, list[int]]) -> None:
        marks = self._marks(directory)  # re-read: another reader may have marked others
        marks.update(fresh)
        try:
            self.storage.write_bytes(f"{directory}/{VERIFIED_NAME}",
                                     json.dumps(marks, sort_keys=True).encode())
        except (OSError, pa.ArrowException):
            pass  # a read-only archive: the segments are rehashed next time, still exact

    def scan(self, seg: Segment, columns: list[str] | None = None) -> pl.LazyFrame:
        """A verified segment's rows (see `verify`)."""
        self.verify([seg])
        return self.storage.scan(seg.path, columns)

    def segments_for_range(self, topic: str, partition: int, generation: int, start: int,
                           end: int) -> list[Segment]:
        """Segments covering [start, end), checked to be contiguous."""
        chosen = [s for s in self.segments(topic, partition, generation)
                  if s.end > start and s.start < end]
        position = start
        for seg in chosen:
            if seg.start > position:
                raise ArchiveError(
                    f"archive gap in {topic}[{partition}] generation {generation}: offsets "
                    f"{position}..{seg.start - 1} are missing under {self.root}"
                )
            position = max(position, seg.end)
        if position < end:
            raise ArchiveError(
                f"the archive of {topic}[{partition}] generation {generation} ends at "
                f"{position}, before the requested offset {end}; run `tidelog archive run`"
            )
        return chosen

    # -- failures --------------------------------------------------------------------
    def _failure_path(self, topic: str, partition: int) -> str:
        return f"{self._partition_dir(topic, partition)}/failure.json"

    def failure(self, topic: str, partition: int) -> PartitionFailure | None:
        path = self._failure_path(topic, partition)
        if not self.storage.exists(path):
            return None
        return PartitionFailure.from_json(json.loads(self.storage.read_bytes(path)))

    def record_failure(self, failure: PartitionFailure) -> PartitionFailure:
        """Write (or refresh) the partition's failure record; it survives restarts."""
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        old = self.failure(failure.topic, failure.partition)
        same = old is not None and (old.generation, old.offset) == (failure.generation,
                                                                     failure.offset)
        failure = replace(failure, first_seen=old.first_seen if same and old else now,
                          last_seen=now, attempts=old.attempts + 1 if same and old else 1)
        self.storage.write_bytes(self._failure_path(failure.topic, failure.partition),
                                 json.dumps(failure.to_json(), indent=2).encode())
        return failure

    def clear_failure(self, topic: str, partition: int) -> None:
        path = self._failure_path(topic, partition)
        if self.storage.exists(path):
            self.storage.fs.delete_file(path)

    def failures(self) -> list[PartitionFailure]:
        """Every partition whose archiving is stopped at an undecodable event."""
        result = []
        for topic in self.topics():
            for pdir in self.storage.listdir(self.storage.path(topic)):
                if pdir.startswith("p") and pdir[1:].isdigit():
                    found = self.failure(topic, int(pdir[1:]))
                    if found is not None:
                        result.append(found)
        return result

    def topics(self) -> list[str]:
        return [n for n in self.storage.listdir(self.storage.base) if not n.startswith(".")]

    def status(self) -> list[dict[str, object]]:
        rows = []
        for topic in self.topics():
            for pdir in self.storage.listdir(self.storage.path(topic)):
                if not pdir.startswith("p"):
                    continue
                partition = int(pdir[1:])
                gens = self.generations(topic, partition)
                if not gens:
                    continue
                current = gens[-1]
                segs = self.segments(topic, partition, current.number)
                failure = self.failure(topic, partition)
                rows.append({
                    "topic": topic, "partition": partition, "generation": current.number,
                    "cluster_id": current.cluster_id, "topic_id": current.topic_id,
                    "high_water_mark": segs[-1].end if segs else current.first_offset,
                    "segments": len(segs),
                    "failure": failure.to_json() if failure else None,
                })
        return rows


def damaged_segment_error(seg: Segment, root: str) -> ArchiveError:
    """The refusal to read a segment that fails its checksum, saying how to recover."""
    return ArchiveError(
        f"archived segment of {seg.topic}[{seg.partition}] generation {seg.generation}, "
        f"offsets {seg.start}..{seg.end - 1}, fails its checksum {seg.checksum}: {seg.path}. "
        "tidelog will not read altered history. Restore the file from a backup; or, while "
        f"Kafka's retention still holds offset {seg.start} of {seg.topic}[{seg.partition}], "
        "move this segment and every later one of the generation out of the archive and run "
        "`tidelog archive run` to archive those offsets again. `tidelog archive verify` "
        f"lists every damaged segment under {root}",
        topic=seg.topic, partition=seg.partition, generation=seg.generation,
        start=seg.start, end=seg.end, path=seg.path)


TRANSACTION_SCHEMA = pa.schema([
    (PARTITION, pa.int32()), (OFFSET, pa.int64()), ("status", pa.string()),
    ("id", pa.string()), ("txid", pa.int64()), ("event_count", pa.int64()),
    ("data_collections", pa.string()), ("ts_ms", pa.int64()),
])
