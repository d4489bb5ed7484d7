"""Read CDC topics as raw messages, bounded by offsets, with the log's identity.

Where the end of a partition is needed we consume until librdkafka reports partition
EOF (which it derives from fetch responses), rather than trusting ListOffsets(LATEST):
that is right on Apache Kafka and on Tansu alike.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from tidelog.adapters import kafka
from tidelog.adapters.kafka import KafkaAdmin
from tidelog.errors import BrokerUnreachable, CutError
from tidelog.settings import KafkaValue, Settings

__all__ = ["LogIdentity", "RawMessage", "log_identity", "list_partitions", "read_range",
           "TopicPartitionKey"]

TopicPartitionKey = tuple[str, int]


@dataclass(frozen=True)
class LogIdentity:
    """Which log an offset belongs to: a recreated topic or a new cluster changes it."""

    cluster_id: str
    topic_id: str

    def to_json(self) -> dict[str, str]:
        return {"cluster_id": self.cluster_id, "topic_id": self.topic_id}


@dataclass(frozen=True, slots=True)
class RawMessage:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int


def log_identity(settings: Settings, topics: list[str], *, missing_ok: bool = False,
                 admin: KafkaAdmin | None = None) -> dict[str, LogIdentity]:
    """Each topic's log identity. A topic the broker lacks raises CutError, or is left
    out with `missing_ok`."""
    admin = admin or KafkaAdmin.for_settings(settings)
    cluster_id, topic_ids = admin.log_ids(topics, missing_ok=missing_ok)
    return {topic: LogIdentity(cluster_id, topic_id) for topic, topic_id in topic_ids.items()}


def list_partitions(settings: Settings, topics: list[str], *,
                    admin: KafkaAdmin | None = None) -> list[TopicPartitionKey]:
    return (admin or KafkaAdmin.for_settings(settings)).partitions(topics)


# The reader's consumer settings (on top of the connection's).
READER_CONFIG: dict[str, KafkaValue] = {
    "group.id": "tidelog-reader",
    "enable.auto.commit": False,
    "enable.partition.eof": True,
    "auto.offset.reset": "error",
    "fetch.max.bytes": 64 * 1024 * 1024,
    "max.partition.fetch.bytes": 16 * 1024 * 1024,
    # A small local queue refilled promptly: with ~10 KB messages a large one
    # (256 MB) ran slower, the memory touched costs more than it buys.
    "queued.max.messages.kbytes": 16384,
    # When the local queue is full librdkafka waits this long before fetching
    # again (default 1 s): with large messages that stalled every read.
    "fetch.queue.backoff.ms": 10,
    # Some brokers (Tansu) report partition EOF only on the next, empty fetch,
    # which they hold this long.
    "fetch.wait.max.ms": 50,
}


def read_range(
    settings: Settings,
    start: dict[TopicPartitionKey, int],
    end: dict[TopicPartitionKey, int] | None = None,
    *,
    idle_timeout: float = 30.0,
    batch_size: int = 10_000,
    eof_patience: float = 20.0,
) -> Iterator[list[RawMessage]]:
    """Yield batches of messages from `start` (inclusive) to `end` (exclusive).

    Without `end`, read each partition up to its end as seen now (partition EOF).
    A partition whose first available offset is above its start raises CutError: the
    offsets were deleted by retention and cannot be read from Kafka any more.
    """
    # partition -> exclusive end offset, or None: up to its end as seen now
    pending = {
        tp: (end or {}).get(tp) for tp, offset in start.items()
        if end is None or offset < end.get(tp, offset)
    }
    if not pending:
        return
    consumer = kafka.consumer(settings.kafka_config(**READER_CONFIG))
    servers = settings.bootstrap_servers
    try:
        with kafka.kafka_errors(f"read {sorted(pending)}", servers):
            consumer.assign([TopicPartition(t, p, start[(t, p)]) for (t, p) in pending])
        horizon = _horizon(consumer, pending, start) if end is None else {}
        last_progress = time.monotonic()
        patience_ends = last_progress + eof_patience
        while pending:
            # A short wait: consume() blocks until the batch is full or the wait is over,
            # and with large messages the local queue may hold less than a full batch.
            with kafka.kafka_errors(f"read {sorted(pending)}", servers):
                messages = consumer.consume(num_messages=batch_size, timeout=0.05)
            patient = time.monotonic() > patience_ends
            batch = _take(messages, pending, start, horizon if patient else {}, servers)
            if batch:
                last_progress = time.monotonic()
                yield batch
            elif time.monotonic() - last_progress > idle_timeout:
                raise BrokerUnreachable(
                    f"no progress reading {sorted(pending)} from {servers} for "
                    f"{idle_timeout:.0f}s; is the broker reachable and are those offsets "
                    "written?", bootstrap_servers=servers)
    finally:
        consumer.close()


def _horizon(consumer: Any, pending: Mapping[TopicPartitionKey, int | None],
             start: Mapping[TopicPartitionKey, int]) -> dict[TopicPartitionKey, int]:
    """The end offsets the broker reports now, where an open-ended read may stop.

    Under continuous writes partition EOF may never come, so after `eof_patience` an
    open-ended read also stops there. Not sooner: some brokers (Tansu) report an end one
    batch early, and only EOF is exact.
    """
    horizon: dict[TopicPartitionKey, int] = {}
    for tp in pending:
        try:
            _low, high = consumer.get_watermark_offsets(TopicPartition(*tp), timeout=10,
                                                        cached=False)
        except KafkaException:
            continue
        if high > start[tp]:
            horizon[tp] = high
    return horizon


def _take(messages: Sequence[Any], pending: dict[TopicPartitionKey, int | None],
          start: Mapping[TopicPartitionKey, int], horizon: Mapping[TopicPartitionKey, int],
          servers: str) -> list[RawMessage]:
    """The messages of one poll still wanted; drops each partition from `pending` once
    it is done (its end, its EOF, or for an open-ended read its `horizon`)."""
    batch: list[RawMessage] = []
    for msg in messages:
        err = msg.error()
        if err is not None:
            # confluent-kafka types these as optional; a partition error names both.
            tp = cast(TopicPartitionKey, (msg.topic(), msg.partition()))
            if err.code() == KafkaError._PARTITION_EOF:
                if tp in pending and pending[tp] is None:
                    del pending[tp]
                continue
            if err.code() == KafkaError._AUTO_OFFSET_RESET:
                raise CutError(
                    f"offset {start.get(tp)} of {tp[0]}[{tp[1]}] is no longer on the "
                    "broker (retention or a recreated topic); read it from the archive"
                )
            raise kafka.broker_error(KafkaException(err), f"read {tp[0]}[{tp[1]}]", servers)
        # A message without an error always has its topic, partition and offset.
        tp = cast(TopicPartitionKey, (msg.topic(), msg.partition()))
        offset = cast(int, msg.offset())
        if tp not in pending:
            continue
        stop = pending[tp]
        if stop is None:
            stop = horizon.get(tp)  # open-ended: the horizon, once patience has run out
        if stop is not None and offset >= stop:
            del pending[tp]
            continue
        batch.append(RawMessage(tp[0], tp[1], offset, msg.key(), msg.value(),
                                msg.timestamp()[1]))
        if stop is not None and offset + 1 >= stop:
            del pending[tp]
    return batch
