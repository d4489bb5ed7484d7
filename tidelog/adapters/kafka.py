"""Kafka, seen from tidelog: the one place confluent-kafka clients are built and
`KafkaException`s are mapped into the error tree.

`KafkaAdmin` answers the questions tidelog asks a broker (topic names and partitions,
cluster and topic ids, end offsets). Unit tests pass it a fake client with the same
methods (`tests/unit/fakes.py`). `Transactions` is a transactional producer for
consume-transform-produce (the serving worker): results and the consumer's offsets
commit together or not at all.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec

from tidelog.errors import BrokerError, BrokerUnreachable, CutError
from tidelog.settings import KafkaValue, Settings

__all__ = [
    "TIMEOUT",
    "KafkaAdmin",
    "Transactions",
    "admin_client",
    "consumer",
    "producer",
    "broker_error",
    "kafka_errors",
]

# Seconds a metadata request may take before the broker counts as unreachable.
TIMEOUT = 15.0

# librdkafka logs through this logger. A library must not print on its own: without a
# handler Python's last-resort handler would write every failed connect to stderr.
_LOG = logging.getLogger("tidelog.kafka")
_LOG.addHandler(logging.NullHandler())

# Error codes meaning "no broker answered", as opposed to a broker answering "no".
_UNREACHABLE = frozenset({
    KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT,
    KafkaError._RESOLVE, KafkaError._MSG_TIMED_OUT, KafkaError._WAIT_COORD,
    KafkaError.REQUEST_TIMED_OUT, KafkaError.NETWORK_EXCEPTION,
})


def admin_client(config: Mapping[str, KafkaValue]) -> AdminClient:
    return AdminClient(dict(config), logger=_LOG)


def consumer(config: Mapping[str, KafkaValue]) -> Consumer:
    return Consumer(dict(config), logger=_LOG)


def producer(config: Mapping[str, KafkaValue]) -> Producer:
    return Producer(dict(config), logger=_LOG)


def _kafka_error(exc: BaseException) -> KafkaError | None:
    if isinstance(exc, KafkaError):
        return exc
    err = exc.args[0] if exc.args else None
    return err if isinstance(err, KafkaError) else None


def broker_error(exc: BaseException, what: str, servers: str) -> BrokerError:
    """The tidelog error for a failed broker request: unreachable (transient) or not."""
    err = _kafka_error(exc)
    text = err.str() if err is not None else str(exc)
    if err is not None and err.code() in _UNREACHABLE:
        return BrokerUnreachable(
            f"cannot {what}: no Kafka broker answered at {servers} ({text}). Check that "
            "the broker is running (`tidelog stack status`, or `tidelog stack up`) and "
            f"that TIDELOG_BOOTSTRAP_SERVERS (now {servers}) points at it, then retry",
            bootstrap_servers=servers)
    return BrokerError(f"cannot {what}: the Kafka broker at {servers} answered {text}",
                       bootstrap_servers=servers)


@contextmanager
def kafka_errors(what: str, servers: str) -> Iterator[None]:
    try:
        yield
    except KafkaException as exc:
        raise broker_error(exc, what, servers) from exc


class KafkaAdmin:
    """A broker's metadata, through one AdminClient (thread-safe, so it may be shared)."""

    def __init__(self, config: Mapping[str, KafkaValue], *, timeout: float | None = None,
                 client: Any = None) -> None:
        self.servers = str(config.get("bootstrap.servers", ""))
        self.timeout = TIMEOUT if timeout is None else timeout
        self.client = client if client is not None else admin_client(config)

    @classmethod
    def for_settings(cls, settings: Settings, *, timeout: float | None = None,
                     client: Any = None) -> KafkaAdmin:
        return cls(settings.kafka_config(), timeout=timeout, client=client)

    def metadata(self) -> Any:
        """The cluster's metadata (`confluent_kafka.admin.ClusterMetadata`)."""
        with kafka_errors("list topics", self.servers):
            return self.client.list_topics(timeout=self.timeout)

    def topic_names(self) -> list[str]:
        return sorted(self.metadata().topics)

    def partitions(self, topics: Sequence[str]) -> list[tuple[str, int]]:
        """Every partition of `topics`; CutError for a topic the broker does not have."""
        metadata = self.metadata()
        result: list[tuple[str, int]] = []
        for topic in topics:
            meta = metadata.topics.get(topic)
            if meta is None or meta.error is not None:
                raise CutError(f"topic {topic} does not exist on {self.servers}", topic=topic)
            result.extend((topic, p) for p in sorted(meta.partitions))
        return result

    def log_ids(self, topics: Sequence[str], *, missing_ok: bool = False
                ) -> tuple[str, dict[str, str]]:
        """The cluster id and each topic's id. A topic the broker does not have raises
        CutError, or is left out with `missing_ok`."""
        what = f"describe topics {list(topics)}"
        wait = self.timeout + 5
        with kafka_errors(what, self.servers):
            cluster = self.client.describe_cluster(
                request_timeout=self.timeout).result(timeout=wait)
            described = self.client.describe_topics(TopicCollection(list(topics)),
                                                    request_timeout=self.timeout)
        ids: dict[str, str] = {}
        for topic, future in described.items():
            try:
                ids[topic] = str(future.result(timeout=wait).topic_id)
            except KafkaException as exc:
                err = _kafka_error(exc)
                if err is None or err.code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                    raise broker_error(exc, what, self.servers) from exc
                if not missing_ok:
                    raise CutError(f"topic {topic} is missing from the broker at "
                                   f"{self.servers}: {err.str()}", topic=topic) from exc
        return str(cluster.cluster_id), ids

    def ensure_topics(self, topics: Sequence[str], partitions: int) -> list[str]:
        """Create those of `topics` the broker lacks (with `partitions` each); the names
        created. A topic that exists keeps its partitions."""
        existing = set(self.topic_names())
        missing = [t for t in topics if t not in existing]
        if not missing:
            return []
        what = f"create topics {missing}"
        with kafka_errors(what, self.servers):
            futures = self.client.create_topics(
                [NewTopic(t, num_partitions=partitions) for t in missing],
                request_timeout=self.timeout)
        for future in futures.values():
            try:
                future.result(timeout=self.timeout + 5)
            except KafkaException as exc:
                err = _kafka_error(exc)
                if err is None or err.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise broker_error(exc, what, self.servers) from exc
        return missing

    def end_offsets(self, partitions: Sequence[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """ListOffsets(LATEST): exact on Apache Kafka; a broker that answers with the base
        offset of its last batch (Tansu) under-reports by up to one batch."""
        if not partitions:
            return {}
        wanted = {TopicPartition(t, p): OffsetSpec.latest() for t, p in partitions}
        ends: dict[tuple[str, int], int] = {}
        with kafka_errors("read end offsets", self.servers):
            futures = self.client.list_offsets(wanted, request_timeout=self.timeout)
            for tp, future in futures.items():
                ends[(tp.topic, tp.partition)] = int(future.result(timeout=self.timeout + 5)
                                                     .offset)
        return ends


class Transactions:
    """One transactional producer (`transactional.id`), its errors mapped.

    A worker keeps its transactional id across restarts: `init` then fences any older
    process holding the same id and aborts whatever transaction it left open, which is
    what makes a `kill -9` lose and duplicate nothing. Every failure is a BrokerError; the
    caller aborts the open transaction (`abort`) and retries the batch, except after a
    fatal error (fenced by a newer worker), where only a new producer can go on.
    """

    def __init__(self, config: Mapping[str, KafkaValue], transactional_id: str, *,
                 timeout: float = 30.0, client: Any = None) -> None:
        self.servers = str(config.get("bootstrap.servers", ""))
        self.transactional_id = transactional_id
        self.timeout = timeout
        self.client = client if client is not None else producer(
            {**config, "transactional.id": transactional_id,
             "enable.idempotence": True, "acks": "all"})

    def _error(self, exc: KafkaException, what: str) -> BrokerError:
        err = _kafka_error(exc)
        if err is not None and err.fatal():
            return BrokerError(
                f"cannot {what}: the producer with transactional id {self.transactional_id} "
                f"hit a fatal error ({err.str()}); most likely another worker started with "
                "the same --worker-id and fenced this one. Stop one of them, or give each "
                "its own --worker-id", bootstrap_servers=self.servers,
                transactional_id=self.transactional_id, fatal=True)
        error = broker_error(exc, what, self.servers)
        error.details["transactional_id"] = self.transactional_id
        error.details["fatal"] = False
        return error

    @contextmanager
    def _mapped(self, what: str) -> Iterator[None]:
        try:
            yield
        except KafkaException as exc:
            raise self._error(exc, what) from exc

    def init(self) -> None:
        with self._mapped(f"initialise transactions for {self.transactional_id}"):
            self.client.init_transactions(self.timeout)

    def begin(self) -> None:
        with self._mapped("begin a transaction"):
            self.client.begin_transaction()

    def produce(self, topic: str, key: bytes, value: bytes) -> None:
        with self._mapped(f"produce to {topic}"):
            while True:
                try:
                    self.client.produce(topic, key=key, value=value)
                    return
                except BufferError:
                    # The local queue is full: let librdkafka send some, then retry.
                    self.client.poll(0.1)

    def commit(self, offsets: Sequence[tuple[str, int, int]], group_metadata: Any) -> None:
        """Send the consumer's next offsets (topic, partition, offset) into the open
        transaction and commit it: results and offsets become visible together."""
        with self._mapped("commit a transaction"):
            self.client.send_offsets_to_transaction(
                [TopicPartition(t, p, o) for t, p, o in offsets], group_metadata,
                self.timeout)
            self.client.commit_transaction(self.timeout)

    def flush(self) -> None:
        """Wait until every produced message is on the broker (still uncommitted)."""
        with self._mapped("flush produced messages"):
            left = self.client.flush(self.timeout)
        if left:
            raise BrokerError(f"cannot flush: {left} messages still unsent after "
                              f"{self.timeout} s to {self.servers}",
                              bootstrap_servers=self.servers, fatal=False)

    def abort(self) -> None:
        with self._mapped("abort a transaction"):
            self.client.abort_transaction(self.timeout)

    def close(self) -> None:
        self.client.flush(self.timeout)
