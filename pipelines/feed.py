"""Reading tidelog's event topics: all of them once (dry runs, history, tests), or as a
consumer group that commits only what the worker has finished with."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from tidelog.errors import BrokerError
from tidelog.events import CloudEvent, ensure_topics, event_topic
from tidelog.settings import KafkaValue, Settings

__all__ = ["read_events", "Feed"]

_LOG = logging.getLogger("tidelog.kafka")


def _decode(msg: Any) -> CloudEvent | None:
    try:
        return CloudEvent.from_kafka(msg.headers(), msg.value())
    except BrokerError as exc:
        _LOG.warning("skipping %s[%s] offset %s: %s", msg.topic(), msg.partition(),
                     msg.offset(), exc.message)
        return None


def read_events(settings: Settings, categories: Sequence[str], timeout: float = 30.0
                ) -> list[CloudEvent]:
    """Every event on the topics of these categories, in offset order per topic."""
    from confluent_kafka import (
        OFFSET_BEGINNING,
        Consumer,
        KafkaError,
        KafkaException,
        TopicPartition,
    )

    topics = [event_topic(settings, c) for c in categories]
    overrides: dict[str, KafkaValue] = {
        "group.id": "tidelog-event-reader", "enable.auto.commit": False,
        "enable.partition.eof": True, "fetch.wait.max.ms": 50}
    consumer = Consumer(settings.kafka_config(**overrides), logger=_LOG)
    try:
        metadata = consumer.list_topics(timeout=15)
        parts = [TopicPartition(t, p, OFFSET_BEGINNING) for t in topics
                 if t in metadata.topics and metadata.topics[t].error is None
                 for p in sorted(metadata.topics[t].partitions)]
        if not parts:
            return []
        consumer.assign(parts)
        pending = {(p.topic, p.partition) for p in parts}
        events: list[CloudEvent] = []
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                raise BrokerError(f"reading the event topics {topics} did not reach their end "
                                  f"within {timeout:.0f}s; is the broker reachable?")
            for msg in consumer.consume(num_messages=1000, timeout=0.2):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard((msg.topic(), msg.partition()))
                        continue
                    raise BrokerError(f"reading {msg.topic()}: {err.str()}")
                event = _decode(msg)
                if event is not None:
                    events.append(event)
        return events
    except KafkaException as exc:
        raise BrokerError(f"cannot read the event topics {topics}: {exc}") from exc
    finally:
        consumer.close()


class Feed:
    """A consumer group on event topics. `commit()` marks everything polled so far as
    handled; until then a restarted worker is handed the same events again."""

    def __init__(self, settings: Settings, group: str, categories: Sequence[str]) -> None:
        from confluent_kafka import Consumer

        self.topics = [event_topic(settings, c) for c in categories]
        ensure_topics(settings, self.topics)  # subscribing to a missing topic only errors
        overrides: dict[str, KafkaValue] = {
            "group.id": group, "enable.auto.commit": False,
            "auto.offset.reset": "earliest", "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000, "fetch.wait.max.ms": 100,
            # a cycle (snapshot, training, gate) runs between two polls
            "max.poll.interval.ms": 6 * 3600 * 1000}
        self._consumer = Consumer(settings.kafka_config(**overrides), logger=_LOG)
        self._consumer.subscribe(self.topics)
        self._uncommitted = False
        self._early: list[Any] = []

    def join(self, timeout: float = 20.0) -> None:
        """Wait until the group has assigned partitions (a join takes seconds), so a first
        poll sees the events already waiting."""
        deadline = time.monotonic() + timeout
        while not self._consumer.assignment() and time.monotonic() < deadline:
            self._early.extend(self._consume(0.2))

    def _consume(self, timeout: float) -> list[Any]:
        from confluent_kafka import KafkaException

        try:
            return list(self._consumer.consume(num_messages=500, timeout=timeout))
        except KafkaException as exc:
            raise BrokerError(f"polling the event topics {self.topics}: {exc}") from exc

    def poll(self, timeout: float) -> list[CloudEvent]:
        from confluent_kafka import KafkaError

        messages, self._early = [*self._early, *self._consume(timeout)], []
        events = []
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                raise BrokerError(f"polling {msg.topic()}: {err.str()}")
            self._uncommitted = True
            event = _decode(msg)
            if event is not None:
                events.append(event)
        return events

    def commit(self) -> None:
        from confluent_kafka import KafkaError, KafkaException

        if not self._uncommitted:
            return
        try:
            self._consumer.commit(asynchronous=False)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.code() == KafkaError._NO_OFFSET:
                return
            if isinstance(err, KafkaError) and err.code() in (
                    KafkaError.ILLEGAL_GENERATION, KafkaError.UNKNOWN_MEMBER_ID,
                    KafkaError.REBALANCE_IN_PROGRESS):
                # The group moved on: these events come again, and handling them twice
                # is harmless (a cycle finds its run); the next commit covers them.
                _LOG.warning("commit skipped, the consumer group is rebalancing: %s", err)
                return
            raise BrokerError(f"committing the consumer group's offsets on {self.topics}: "
                              f"{exc}") from exc
        self._uncommitted = False

    def close(self) -> None:
        self._consumer.close()
