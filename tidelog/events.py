"""tidelog's events on the broker: CloudEvents 1.0 in the Kafka binary binding.

An event is a Kafka message whose value is the JSON `data` and whose headers carry the
CloudEvents attributes (`ce_specversion`, `ce_id`, `ce_source`, `ce_type`, `ce_time`,
`ce_subject`, `ce_dataschema`, and `content-type`). The message key is the subject, so the
events about one pipeline or model stay in order on their partition. The encoding is the
binding's, written out here instead of taking the `cloudevents` package for ~60 lines.

Each event id is a UUIDv5 of what the event describes (the snapshot's cut and digest, the
run id, the gate decision ...), never of the moment it is sent: publishing the same fact
twice gives the same id, and consumers de-duplicate on it. docs/events.md has the types,
topics and schemas (tidelog/schemas/events/v1/<type>.json).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

from tidelog.errors import BrokerError, ConfigError
from tidelog.settings import KafkaValue, Settings

__all__ = [
    "SPEC_VERSION",
    "CONTENT_TYPE",
    "SCHEMA_VERSION",
    "EVENTS_INFIX",
    "EventType",
    "EVENT_TYPES",
    "CloudEvent",
    "event_id",
    "event_topic",
    "event_topics",
    "is_event_topic",
    "load_schema",
    "new_event",
    "events_enabled",
    "Publisher",
    "publish",
    "ensure_topics",
]

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/json"
SCHEMA_VERSION = "v1"
# Event topics are <topic prefix>.tidelog.events.<category>. Debezium names table topics
# <prefix>.<schema>.<table>, so a table cannot produce a four-part name ending like this
# (see `is_event_topic`, which keeps the archiver off them).
EVENTS_INFIX = "tidelog.events"
_NAMESPACE = uuid.UUID("5b0c4f3e-7d1e-4c55-9a1f-6f3ad1e0c0de")  # tidelog's, fixed forever


@dataclass(frozen=True)
class EventType:
    name: str  # e.g. "dataset.ready"
    category: str  # the topic it goes to

    @property
    def ce_type(self) -> str:
        return f"dev.tidelog.{self.name}.{SCHEMA_VERSION}"

    @property
    def dataschema(self) -> str:
        return f"urn:tidelog:schema:events:{SCHEMA_VERSION}:{self.name}"


EVENT_TYPES: dict[str, EventType] = {t.name: t for t in (
    EventType("dataset.ready", "dataset"),
    EventType("model.trained", "model"),
    EventType("model.promoted", "model"),
    EventType("model.rejected", "model"),
    EventType("drift.detected", "drift"),
    EventType("retrain.requested", "retrain"),
    EventType("pipeline.triggered", "pipeline"),
)}


def event_topic(settings: Settings, category: str) -> str:
    return f"{settings.topic_prefix}.{EVENTS_INFIX}.{category}"


def event_topics(settings: Settings) -> list[str]:
    return sorted({event_topic(settings, t.category) for t in EVENT_TYPES.values()})


def is_event_topic(topic: str, prefix: str) -> bool:
    return topic.startswith(f"{prefix}.{EVENTS_INFIX}.")


def event_id(kind: str, *parts: str) -> str:
    """A UUIDv5 of the event type and the facts that identify it."""
    return str(uuid.uuid5(_NAMESPACE, "\x1f".join((kind, *parts))))


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class CloudEvent:
    id: str
    source: str
    type: str
    subject: str
    time: str  # RFC 3339, UTC
    data: dict[str, Any]
    dataschema: str = ""

    @property
    def kind(self) -> str:
        """The tidelog event type name, e.g. "dataset.ready"."""
        return self.type.removeprefix("dev.tidelog.").rsplit(".", 1)[0]

    def to_json(self) -> dict[str, Any]:
        """The structured form (what the JSON Schemas describe)."""
        return {"specversion": SPEC_VERSION, "id": self.id, "source": self.source,
                "type": self.type, "subject": self.subject, "time": self.time,
                "datacontenttype": CONTENT_TYPE, "dataschema": self.dataschema,
                "data": self.data}

    def to_kafka(self) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
        """(key, value, headers) of the Kafka binary binding."""
        headers = [("ce_specversion", SPEC_VERSION), ("ce_id", self.id),
                   ("ce_source", self.source), ("ce_type", self.type),
                   ("ce_time", self.time), ("ce_subject", self.subject),
                   ("ce_dataschema", self.dataschema), ("content-type", CONTENT_TYPE)]
        value = json.dumps(self.data, sort_keys=True, separators=(",", ":")).encode()
        return self.subject.encode(), value, [(k, v.encode()) for k, v in headers]

    @classmethod
    def from_kafka(cls, headers: Sequence[tuple[str, bytes | None]] | None,
                   value: bytes | None) -> CloudEvent:
        attrs = {k: (v or b"").decode() for k, v in headers or ()}
        if attrs.get("ce_specversion") != SPEC_VERSION:
            raise BrokerError(f"message is not a CloudEvents {SPEC_VERSION} event in the "
                              f"binary binding (ce_specversion={attrs.get('ce_specversion')!r})")
        if attrs.get("content-type", CONTENT_TYPE).split(";")[0] != CONTENT_TYPE:
            raise BrokerError(f"event {attrs.get('ce_id')} has content-type "
                              f"{attrs['content-type']!r}; tidelog reads {CONTENT_TYPE}")
        try:
            data = json.loads(value or b"null")
            return cls(id=attrs["ce_id"], source=attrs["ce_source"], type=attrs["ce_type"],
                       subject=attrs.get("ce_subject", ""), time=attrs.get("ce_time", ""),
                       data=data, dataschema=attrs.get("ce_dataschema", ""))
        except (KeyError, ValueError) as exc:
            raise BrokerError(f"malformed CloudEvent (headers {sorted(attrs)}): {exc}") from exc


def new_event(settings: Settings, kind: str, subject: str, data: Mapping[str, Any],
              identity: Sequence[str], component: str, time: str | None = None) -> CloudEvent:
    """An event of type `kind` whose id derives from `identity` (what it describes)."""
    if kind not in EVENT_TYPES:
        raise ConfigError(f"unknown event type {kind!r}; known: {sorted(EVENT_TYPES)}")
    t = EVENT_TYPES[kind]
    return CloudEvent(id=event_id(kind, *identity),
                      source=f"urn:tidelog:{settings.topic_prefix}:{component}",
                      type=t.ce_type, subject=subject, time=time or _now(), data=dict(data),
                      dataschema=t.dataschema)


def load_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one event type's structured form."""
    text = (resources.files("tidelog") / "schemas" / "events" / SCHEMA_VERSION
            / f"{kind}.json").read_text()
    return dict(json.loads(text))


def events_enabled(settings: Settings) -> bool:
    return settings.events  # TIDELOG_EVENTS, parsed and checked by tidelog.settings.CoreEnv


def ensure_topics(settings: Settings, topics: Sequence[str]) -> None:
    """Create the missing event topics, one partition each (one total order per topic)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(settings.kafka_config())
    try:
        existing = admin.list_topics(timeout=15).topics
        missing = [t for t in topics if t not in existing]
        if not missing:
            return
        for future in admin.create_topics([NewTopic(t, 1, 1) for t in missing]).values():
            try:
                future.result(timeout=30)
            except KafkaException as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise
    except KafkaException as exc:
        raise BrokerError(f"cannot create the event topics {list(topics)} on "
                          f"{settings.bootstrap_servers}: {exc}; create them with one "
                          "partition, or check the broker", topics=list(topics)) from exc


class Publisher:
    """Produces events, creating their topics (one partition: one total order) if missing."""

    def __init__(self, settings: Settings) -> None:
        from confluent_kafka import Producer

        self.settings = settings
        overrides: dict[str, KafkaValue] = {
            "acks": "all", "enable.idempotence": True, "linger.ms": 0}
        self._producer = Producer(settings.kafka_config(**overrides))
        self._ready: set[str] = set()

    def _ensure_topic(self, topic: str) -> None:
        if topic not in self._ready:
            ensure_topics(self.settings, [topic])
            self._ready.add(topic)

    def publish(self, event: CloudEvent) -> None:
        topic = event_topic(self.settings, EVENT_TYPES[event.kind].category)
        self._ensure_topic(topic)
        key, value, headers = event.to_kafka()
        failures: list[str] = []

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                failures.append(str(err))

        from confluent_kafka import KafkaException

        try:
            # The list is only read; confluent-kafka types it with wider values (invariant).
            self._producer.produce(topic, value=value, key=key,
                                   headers=cast("list[tuple[str, str | bytes | None]]", headers),
                                   on_delivery=delivered)
        except (BufferError, KafkaException) as exc:
            raise BrokerError(f"cannot send event {event.id} ({event.type}) to {topic}: "
                              f"{exc}", event_id=event.id) from exc
        left = self._producer.flush(30)
        if left or failures:
            raise BrokerError(
                f"event {event.id} ({event.type}) was not acknowledged by {topic}: "
                f"{failures[0] if failures else 'timed out after 30 s'}; the step it reports "
                "is done — rerun it to publish again (same event id)", event_id=event.id)


def publish(settings: Settings, event: CloudEvent) -> bool:
    """Publish when events are enabled (setting `events`); say whether it was sent."""
    if not events_enabled(settings):
        return False
    Publisher(settings).publish(event)
    return True
