"""In-memory fakes of the Kafka side, for unit tests of the archiver and the adapter.

`FakeBroker` holds topics of raw messages and stands in for the functions the archiver
calls (`install(monkeypatch)`); `FakeAdminClient` has the AdminClient methods
`tidelog.adapters.kafka.KafkaAdmin` calls, with a switch that makes every call fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from cdc.reader import LogIdentity, RawMessage
from tidelog.settings import Settings


@dataclass
class FakeBroker:
    cluster_id: str = "fake-cluster"
    topics: dict[str, list[RawMessage]] = field(default_factory=dict)

    def produce(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        log = self.topics.setdefault(topic, [])
        log.append(RawMessage(topic, 0, len(log), key, value, 1_700_000_000_000 + len(log)))

    def log_identity(self, settings: Settings, topics: list[str], **_: Any
                     ) -> dict[str, LogIdentity]:
        return {t: LogIdentity(self.cluster_id, f"id-{t}") for t in topics}

    def list_partitions(self, settings: Settings, topics: list[str], **_: Any
                        ) -> list[tuple[str, int]]:
        return [(t, 0) for t in topics]

    def cdc_topics(self, settings: Settings, prefix: str | None = None, **_: Any
                   ) -> list[str]:
        prefix = prefix or settings.topic_prefix
        return sorted(t for t in self.topics if t.startswith(f"{prefix}."))

    def read_range(self, settings: Settings, start: dict[tuple[str, int], int],
                   end: dict[tuple[str, int], int] | None = None, **_: Any
                   ) -> Iterator[list[RawMessage]]:
        for (topic, partition), offset in sorted(start.items()):
            stop = (end or {}).get((topic, partition), len(self.topics[topic]))
            batch = [m for m in self.topics[topic][offset:stop] if m.partition == partition]
            if batch:
                yield batch

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeBroker:
        import snapshotter.archiving

        for name in ("log_identity", "list_partitions", "cdc_topics", "read_range"):
            monkeypatch.setattr(snapshotter.archiving, name, getattr(self, name))
        return self


def _future(value: Any = None, error: BaseException | None = None) -> Future[Any]:
    future: Future[Any] = Future()
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
    return future


@dataclass
class FakeAdminClient:
    """Topics by name -> (topic id, partition count); `down` makes every call fail the
    way librdkafka does when no broker answers."""

    topics: dict[str, tuple[str, int]] = field(default_factory=dict)
    cluster_id: str = "fake-cluster"
    ends: dict[tuple[str, int], int] = field(default_factory=dict)
    down: bool = False

    def _check(self) -> None:
        if self.down:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT,
                                            "Local: Broker transport failure"))

    def list_topics(self, timeout: float = -1) -> Any:
        self._check()
        return SimpleNamespace(topics={
            name: SimpleNamespace(error=None, partitions={p: None for p in range(count)})
            for name, (_id, count) in self.topics.items()})

    def describe_cluster(self, request_timeout: float = -1) -> Future[Any]:
        self._check()
        return _future(SimpleNamespace(cluster_id=self.cluster_id))

    def describe_topics(self, topics: Any, request_timeout: float = -1
                        ) -> dict[str, Future[Any]]:
        self._check()
        result = {}
        for name in topics.topic_names:
            if name in self.topics:
                result[name] = _future(SimpleNamespace(topic_id=self.topics[name][0]))
            else:
                result[name] = _future(error=KafkaException(KafkaError(
                    KafkaError.UNKNOWN_TOPIC_OR_PART, "Broker: Unknown topic or partition")))
        return result

    def list_offsets(self, wanted: dict[Any, Any], request_timeout: float = -1
                     ) -> dict[Any, Future[Any]]:
        self._check()
        return {tp: _future(SimpleNamespace(offset=self.ends.get((tp.topic, tp.partition), 0)))
                for tp in wanted}


@dataclass
class FakeMessage:
    """What `Consumer.consume` returns: a record, or an error event of a partition."""

    _topic: str
    _partition: int
    _offset: int = -1
    _value: bytes | None = None
    _error: KafkaError | None = None

    def error(self) -> KafkaError | None:
        return self._error

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return None if self._error else f"k{self._offset}".encode()

    def value(self) -> bytes | None:
        return self._value

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000 + self._offset)


@dataclass
class FakeConsumer:
    """A consumer over in-memory partitions: `logs[(topic, p)]` holds the values from
    offset `first[(topic, p)]` (retention trims the head) up to the end; `eof` switches
    partition-EOF events, `chunk` is how many records one consume() hands out."""

    logs: dict[tuple[str, int], list[bytes]]
    first: dict[tuple[str, int], int] = field(default_factory=dict)
    eof: bool = True
    chunk: int = 3
    positions: dict[tuple[str, int], int] = field(default_factory=dict)
    closed: bool = False
    sent_eof: set[tuple[str, int]] = field(default_factory=set)

    def assign(self, partitions: list[Any]) -> None:
        self.positions = {(tp.topic, tp.partition): tp.offset for tp in partitions}

    def get_watermark_offsets(self, tp: Any, timeout: float = -1, cached: bool = False
                              ) -> tuple[int, int]:
        key = (tp.topic, tp.partition)
        low = self.first.get(key, 0)
        return low, low + len(self.logs[key])

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[FakeMessage]:
        out: list[FakeMessage] = []
        for key, position in sorted(self.positions.items()):
            low = self.first.get(key, 0)
            if position < low:
                out.append(FakeMessage(*key, _error=KafkaError(
                    KafkaError._AUTO_OFFSET_RESET, "Local: No offset stored")))
                continue
            end = low + len(self.logs[key])
            upto = min(end, position + self.chunk, position + num_messages - len(out))
            for offset in range(position, upto):
                out.append(FakeMessage(*key, _offset=offset,
                                       _value=self.logs[key][offset - low]))
            self.positions[key] = upto
            if upto == end and self.eof and key not in self.sent_eof:
                self.sent_eof.add(key)
                out.append(FakeMessage(*key, _error=KafkaError(
                    KafkaError._PARTITION_EOF, "Broker: No more messages")))
        return out

    def close(self) -> None:
        self.closed = True

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeConsumer:
        from tidelog.adapters import kafka

        monkeypatch.setattr(kafka, "consumer", lambda config: self)
        return self
