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
import queue
import re
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from cdc.events import METADATA_COLUMNS
from cdc.reader import (
    LogIdentity,
    RawMessage,
    TopicPartitionKey,
    list_partitions,
    log_identity,
    read_range,
)
from snapshotter.openlineage import archive_marks, describe_archive
from snapshotter.poison import (
    DECODE_FAILURES,
    Decoder,
    PartitionFailure,
    failure_of,
    poison_error,
    split_at_poison,
)
from snapshotter.storage import Storage
from tidelog.adapters.kafka import KafkaAdmin
from tidelog.crashpoints import crash_point
from tidelog.errors import ArchiveError, LogIdentityError
from tidelog.openlineage import traced
from tidelog.settings import Settings
from tidelog.topics import in_prefix, is_serving_topic, transaction_topic

__all__ = [
    "Generation",
    "Segment",
    "PartitionFailure",
    "Archive",
    "damaged_segment_error",
    "archive_topics",
    "run_archiver",
    "cdc_topics",
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


# Messages per fetched batch handed to the decoder. Small batches keep the bytes in
# flight few (fetch, decode and the prefetch queue then work in cache and on reused
# memory): 1,000 ran ~1.3x faster than 10,000 for ~10 KB messages.
READ_BATCH = 1_000


TRANSACTION_SCHEMA = pa.schema([
    ("__partition", pa.int32()), ("__offset", pa.int64()), ("status", pa.string()),
    ("id", pa.string()), ("txid", pa.int64()), ("event_count", pa.int64()),
    ("data_collections", pa.string()), ("ts_ms", pa.int64()),
])


def _transaction_table(messages: Sequence[RawMessage]) -> pa.Table:
    from cdc.events import decode_transaction

    rows = []
    for m in messages:
        if m.value is None:
            continue
        tx = decode_transaction(m.topic, m.partition, m.offset, m.key, m.value)
        collections = json.dumps([{"data_collection": t, "event_count": n}
                                  for t, n in tx.data_collections]) if tx.status == "END" else None
        rows.append({"__partition": m.partition, "__offset": m.offset, "status": tx.status,
                     "id": tx.id, "txid": tx.txid, "event_count": tx.event_count,
                     "data_collections": collections, "ts_ms": tx.ts_ms})
    return pa.Table.from_pylist(rows, schema=TRANSACTION_SCHEMA)


def _transaction_run(messages: Sequence[RawMessage]) -> list[tuple[pa.Table, int, int]]:
    return [(_transaction_table(messages), messages[0].offset, messages[-1].offset)]


def _schema_bytes(value: bytes | None) -> bytes | None:
    """The value schema's exact bytes (JsonConverter writes `{"schema":S,"payload":P}`)."""
    if value is None:
        return None
    cut = value.find(b',"payload":')
    return value[:cut] if cut > 0 else value


def _default_decoder(messages: Sequence[RawMessage]) -> list[tuple[pa.Table, int, int]]:
    """Messages of one partition -> runs of one value schema each, in the archive layout.

    Runs are split on the schema's bytes, and each run is decoded straight from the raw
    messages into Arrow columns: no per-event Python objects on the archive's hot path.
    """
    from cdc.events import events_to_arrow

    runs: list[list[RawMessage]] = []
    current: bytes | None = None
    for m in messages:
        value = m.value
        if value is not None and current is not None and value.startswith(current) and \
                value.startswith(b',"payload":', len(current)):
            schema: bytes | None = current  # the common case: a memcmp, no search
        else:
            schema = _schema_bytes(value)
        if not runs or (schema is not None and current is not None and schema != current):
            runs.append([])
        if schema is not None:
            current = schema
        runs[-1].append(m)
    result = []
    for i, run in enumerate(runs):
        last = runs[i + 1][0].offset - 1 if i + 1 < len(runs) else messages[-1].offset
        result.append((events_to_arrow(run), run[0].offset, last))
    return result


def cdc_topics(settings: Settings, prefix: str | None = None, *,
               admin: KafkaAdmin | None = None) -> list[str]:
    """Every CDC topic of the connector's prefix (tables and the transaction topic), not
    tidelog's own event topics (<prefix>.tidelog.events.*) nor the serving topics
    (<prefix>.serving.<model>.requests|results|labels)."""
    from tidelog.events import is_event_topic

    prefix = prefix or settings.topic_prefix
    names = (admin or KafkaAdmin.for_settings(settings)).topic_names()
    return [t for t in names if in_prefix(prefix, t) and not is_event_topic(t, prefix)
            and not is_serving_topic(prefix, t)]


def _prefetched(batches: Iterator[list[RawMessage]], depth: int = 4
                ) -> Iterator[list[RawMessage]]:
    """Fetch the next batches in a thread while this one is decoded and written.

    librdkafka fetches without the GIL, so fetching and decoding overlap; errors from the
    reader are re-raised here, in order.
    """
    done = object()
    buffer: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def pump() -> None:
        try:
            for batch in batches:
                while not stop.is_set():
                    try:
                        buffer.put(batch, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put(done)
        except BaseException as exc:  # noqa: BLE001 - handed to the consuming thread
            buffer.put(exc)
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()  # the reader's consumer is closed in the thread that used it

    worker = threading.Thread(target=pump, name="tidelog-archive-fetch", daemon=True)
    worker.start()
    try:
        while True:
            item = buffer.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        worker.join(timeout=30)


@traced("archive", describe_archive, before=archive_marks)
def archive_topics(
    settings: Settings,
    topics: Iterable[str],
    *,
    decoder: Decoder = _default_decoder,
    on_new_log: str = "new-generation",
    archive: Archive | None = None,
    batch_size: int = 50_000,
) -> dict[TopicPartitionKey, int]:
    """Append everything new on `topics` to the archive; return the high-water marks.

    One writer at a time per local archive (an exclusive lock on `<root>/.writer.lock`):
    two archivers resuming from the same high-water mark would write overlapping
    segments. Object-store archives need a single archiver by deployment.
    """
    archive = archive or Archive(settings.archive_root)
    with archive.writer_lock():
        return _archive_topics(settings, topics, decoder, on_new_log, archive, batch_size)


def _archive_topics(settings: Settings, topics: Iterable[str], decoder: Decoder,
                    on_new_log: str, archive: Archive, batch_size: int
                    ) -> dict[TopicPartitionKey, int]:
    topics = sorted(set(topics))
    # Debezium's transaction topic has its own layout; a table may be named
    # `transaction` too, so only the exact configured name counts.
    tx_topic = transaction_topic(settings.topic_prefix)
    identities = log_identity(settings, topics)
    start: dict[TopicPartitionKey, int] = {}
    generation: dict[TopicPartitionKey, int] = {}
    for topic, partition in list_partitions(settings, topics):
        identity = identities[topic]
        gen = archive.generation_for(topic, partition, identity)
        if gen is None:
            previous = archive.generations(topic, partition)
            if previous and on_new_log == "fail":
                raise LogIdentityError(
                    f"{topic}[{partition}] now belongs to a different log ({identity}) than "
                    f"the archive's generation {previous[-1].number} ({previous[-1].identity});"
                    " the topic was recreated or the broker restarted. Rerun with "
                    "--on-new-log new-generation to archive it as a new generation."
                )
        # Temporaries a killed archiver left: of log.json (partition) and of segments.
        archive.storage.remove_temporaries(archive._partition_dir(topic, partition))
        gen = archive.open_generation(topic, partition, identity)
        archive.storage.remove_temporaries(
            archive._generation_dir(topic, partition, gen.number))
        start[(topic, partition)] = archive.high_water_mark(topic, partition, gen)
        generation[(topic, partition)] = gen.number
    marks = dict(start)
    # Each fetched batch is decoded as soon as it arrives, while the reader thread fetches
    # the next one; segments are written once `batch_size` events of a partition are
    # decoded (fewer, larger segments).
    decoded: dict[TopicPartitionKey, list[tuple[pa.Table, int, int]]] = {}
    counts: dict[TopicPartitionKey, int] = {}

    def flush(tp: TopicPartitionKey) -> None:
        counts.pop(tp, None)
        # Offsets may skip (transaction markers, compaction): segments still cover
        # [previous end, last offset + 1) so the archive stays gap-free.
        for table, last in _merge_runs(decoded.pop(tp, [])):
            archive.write_segment(tp[0], tp[1], generation[tp], marks[tp], last + 1, table)
            marks[tp] = last + 1

    failed: dict[TopicPartitionKey, PartitionFailure] = {}
    for batch in _prefetched(read_range(settings, start, batch_size=READ_BATCH)):
        by_partition: dict[TopicPartitionKey, list[RawMessage]] = {}
        for msg in batch:
            tp = (msg.topic, msg.partition)
            if msg.offset >= marks[tp] and tp not in failed:
                by_partition.setdefault(tp, []).append(msg)
        for tp, messages in by_partition.items():
            decode = _transaction_run if tp[0] == tx_topic else decoder
            try:
                runs = decode(messages)
            except DECODE_FAILURES as exc:
                # Archive what precedes the poison event, then stop this partition there.
                good, poison, error = split_at_poison(decode, messages, exc)
                decoded.setdefault(tp, []).extend(good)
                flush(tp)
                failed[tp] = archive.record_failure(
                    failure_of(poison, generation[tp], error))
                continue
            decoded.setdefault(tp, []).extend(runs)
            counts[tp] = counts.get(tp, 0) + len(messages)
            if counts[tp] >= batch_size:
                flush(tp)
    for tp in list(decoded):
        flush(tp)
    for tp in marks:
        if tp in failed:
            continue
        old = archive.failure(*tp)
        if old is not None and (old.generation != generation[tp] or marks[tp] > old.offset):
            archive.clear_failure(*tp)  # decoded past it (a fixed tidelog) or a new log
    return marks


def _merge_runs(runs: list[tuple[pa.Table, int, int]]) -> list[tuple[pa.Table, int]]:
    """Consecutive decoded runs of one partition -> (table, last offset) per segment.

    Neighbouring runs with the same Arrow schema (metadata included) become one table; a
    run of only tombstones (no data columns) joins its neighbour with null data columns,
    as one decode of both would give; any other change of schema starts a new segment.
    """
    groups: list[tuple[pa.Schema, list[pa.Table], int]] = []
    for table, _first, last in runs:
        if groups:
            schema, tables, _last = groups[-1]
            if table.schema.equals(schema, check_metadata=True):
                groups[-1] = (schema, [*tables, table], last)
                continue
            if _only_metadata_of(table.schema, schema):
                groups[-1] = (schema, [*tables, _padded(table, schema)], last)
                continue
            if _only_metadata_of(schema, table.schema):
                groups[-1] = (table.schema,
                              [*(_padded(t, table.schema) for t in tables), table], last)
                continue
        groups.append((table.schema, [table], last))
    return [(pa.concat_tables(tables) if len(tables) > 1 else tables[0], last)
            for _schema, tables, last in groups]


_METADATA_FIELDS = [pa.field(name, t) for name, t in METADATA_COLUMNS]


def _only_metadata_of(small: pa.Schema, big: pa.Schema) -> bool:
    """`small` has only the metadata columns, and `big` starts with them."""
    n = len(_METADATA_FIELDS)
    return (len(small) == n and len(big) > n
            and all(small.field(i).equals(f) and big.field(i).equals(f)
                    for i, f in enumerate(_METADATA_FIELDS)))


def _padded(table: pa.Table, schema: pa.Schema) -> pa.Table:
    nulls = [pa.nulls(table.num_rows, f.type) for f in list(schema)[table.num_columns:]]
    return pa.Table.from_arrays([*table.columns, *nulls], schema=schema)


def run_archiver(settings: Settings, topics: Sequence[str] | None, *, follow: bool,
                 interval: float = 1.0, on_new_log: str = "new-generation",
                 report: Callable[[dict[TopicPartitionKey, int]], None] | None = None,
                 batch_size: int = 50_000,
                 on_failure: Callable[[list[PartitionFailure]], None] | None = None,
                 ) -> dict[TopicPartitionKey, int]:
    """Archive once, or until interrupted with `follow`.

    Partitions stopped at an undecodable event are reported through `on_failure` on every
    pass; a single pass then raises PoisonEventError, after archiving everything else.
    """
    stop = threading.Event()
    if follow and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    archive = Archive(settings.archive_root)
    while True:
        chosen = list(topics) if topics else cdc_topics(settings)
        if not chosen:
            raise ArchiveError(
                f"no CDC topics with prefix {settings.topic_prefix!r} on "
                f"{settings.bootstrap_servers}; apply a connector first"
            )
        marks = archive_topics(settings, chosen, on_new_log=on_new_log,
                               batch_size=batch_size, archive=archive)
        if report:
            report(marks)
        failures = [f for f in archive.failures() if f.topic in chosen]
        if failures and on_failure:
            on_failure(failures)
        if not follow or stop.wait(interval):
            if failures:
                raise poison_error(failures)
            return marks
        time.sleep(0)

