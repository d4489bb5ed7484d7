"""Archiving: reading the CDC topics and appending them to the archive, exactly once.

`archive_topics` catches every partition up to the broker's end offsets; `run_archiver`
does that once or keeps following. Each batch of messages is decoded into Arrow
(`cdc.events`), a poison message stops only its partition (snapshotter/poison.py), and
the segments are appended through `snapshotter.archive.Archive`, whose high-water mark is
where the next run resumes.
"""

from __future__ import annotations

import json
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

import pyarrow as pa

from cdc.columns import METADATA_COLUMNS, OFFSET, PARTITION, with_salts
from cdc.reader import (
    RawMessage,
    TopicPartitionKey,
    list_partitions,
    log_identity,
    read_range,
)
from snapshotter.archive import TRANSACTION_SCHEMA, Archive
from snapshotter.openlineage import archive_marks, describe_archive
from snapshotter.poison import (
    DECODE_FAILURES,
    Decoder,
    PartitionFailure,
    failure_of,
    poison_error,
    split_at_poison,
)
from snapshotter.row_hashes import with_row_hashes
from tidelog.adapters.kafka import KafkaAdmin
from tidelog.errors import ArchiveError, LogIdentityError
from tidelog.openlineage import traced
from tidelog.settings import Settings
from tidelog.topics import in_prefix, is_serving_topic, transaction_topic

__all__ = ["archive_topics", "run_archiver", "cdc_topics"]

# Messages per fetched batch handed to the decoder. Small batches keep the bytes in
# flight few (fetch, decode and the prefetch queue then work in cache and on reused
# memory): 1,000 ran ~1.3x faster than 10,000 for ~10 KB messages.
READ_BATCH = 1_000


def _transaction_table(messages: Sequence[RawMessage]) -> pa.Table:
    from cdc.events import decode_transaction

    rows = []
    for m in messages:
        if m.value is None:
            continue
        tx = decode_transaction(m.topic, m.partition, m.offset, m.key, m.value)
        collections = json.dumps([{"data_collection": t, "event_count": n}
                                  for t, n in tx.data_collections]) if tx.status == "END" else None
        rows.append({PARTITION: m.partition, OFFSET: m.offset, "status": tx.status,
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
            if tp[0] != tx_topic:
                # drawn once: a segment is never re-decoded; then each row's hash
                table = with_row_hashes(with_salts(table))
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

