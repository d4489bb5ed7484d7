"""What a serving worker wrote: its results topic, and the labels topic joined to it.

The contract (docs/monitoring.md): `<prefix>.serving.<model>.results`, key = request id,
value a JSON object with `request_id`, `source`, `instance`, `prediction`, `model`
(`name`, `version`, `run_id`, `alias`), `snapshot_id`, `cut_digest`, `latency_ms`,
`served_at`, `error`; and `<prefix>.serving.<model>.labels` with `{"request_id", "label"}`.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from tidelog.adapters.kafka import consumer, kafka_errors
from tidelog.errors import BrokerError
from tidelog.settings import KafkaValue, Settings
from tidelog.topics import serving_labels_topic as labels_topic
from tidelog.topics import serving_results_topic as results_topic

__all__ = ["results_topic", "labels_topic", "ServedResult", "read_results", "read_labels",
           "parse_result"]

_LOG = logging.getLogger("tidelog.monitoring")


@dataclass(frozen=True)
class ServedResult:
    request_id: str
    partition: int  # where the result sits on the results topic
    offset: int
    instance: dict[str, Any]
    prediction: Any
    version: str
    run_id: str
    snapshot_id: str
    cut_digest: str
    latency_ms: float | None
    served_at: str
    error: dict[str, Any] | None


def parse_result(value: bytes | None, partition: int, offset: int) -> ServedResult | None:
    """One results message, or None (with a warning) when it is not one."""
    try:
        body = json.loads(value or b"null")
        model = body.get("model") or {}
        latency = body.get("latency_ms")
        return ServedResult(
            request_id=str(body["request_id"]), partition=partition, offset=offset,
            instance=dict(body.get("instance") or {}), prediction=body.get("prediction"),
            version=str(model.get("version", "")), run_id=str(model.get("run_id", "")),
            snapshot_id=str(body.get("snapshot_id") or ""),
            cut_digest=str(body.get("cut_digest") or ""),
            latency_ms=float(latency) if latency is not None else None,
            served_at=str(body.get("served_at") or ""), error=body.get("error"))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        _LOG.warning("skipping results message at partition %s offset %s: %s", partition,
                     offset, exc)
        return None


def _scan(settings: Settings, topic: str, timeout: float) -> Iterator[Any]:
    """Every message of every partition of `topic`, in offset order per partition; none
    when the topic does not exist. Reads to the end each partition reports by EOF, so no
    end offset from ListOffsets is trusted (a broker may report it early)."""
    from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

    overrides: dict[str, KafkaValue] = {
        "group.id": "tidelog-monitor-reader", "enable.auto.commit": False,
        "enable.partition.eof": True, "fetch.wait.max.ms": 50}
    reader = consumer(settings.kafka_config(**overrides))
    try:
        with kafka_errors(f"read {topic}", settings.bootstrap_servers):
            metadata = reader.list_topics(timeout=15)
            meta = metadata.topics.get(topic)
            if meta is None or meta.error is not None:
                return
            parts = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(meta.partitions)]
            reader.assign(parts)
            pending = {p.partition for p in parts}
            deadline = time.monotonic() + timeout
            while pending:
                if time.monotonic() > deadline:
                    raise BrokerError(f"reading {topic} did not reach its end within "
                                      f"{timeout:.0f}s; is the broker at "
                                      f"{settings.bootstrap_servers} reachable?", topic=topic)
                for msg in reader.consume(num_messages=1000, timeout=0.2):
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            pending.discard(msg.partition())
                            continue
                        raise BrokerError(f"reading {topic}: {err.str()}", topic=topic)
                    yield msg
    finally:
        reader.close()


def read_results(settings: Settings, model: str, last: int,
                 keep: Callable[[ServedResult], bool] | None = None,
                 timeout: float = 120.0) -> tuple[list[ServedResult], int]:
    """The newest `last` results (per partition, then the newest `last` of those by their
    served_at time) that `keep` accepts, and how many results `keep` refused."""
    topic = results_topic(settings.topic_prefix, model)
    newest: dict[int, deque[ServedResult]] = {}
    refused = 0
    for msg in _scan(settings, topic, timeout):
        result = parse_result(msg.value(), msg.partition(), msg.offset())
        if result is None:
            continue
        if keep is not None and not keep(result):
            refused += 1
            continue
        newest.setdefault(result.partition, deque(maxlen=last)).append(result)
    merged = sorted((r for q in newest.values() for r in q),
                    key=lambda r: (r.served_at, r.partition, r.offset))
    return merged[-last:] if last else [], refused


def read_labels(settings: Settings, model: str, wanted: set[str],
                timeout: float = 120.0) -> dict[str, Any]:
    """request id -> label for the wanted requests (the last label sent for one wins)."""
    labels: dict[str, Any] = {}
    for msg in _scan(settings, labels_topic(settings.topic_prefix, model), timeout):
        try:
            body = json.loads(msg.value() or b"null")
            request_id = str(body["request_id"])
        except (ValueError, TypeError, KeyError) as exc:
            _LOG.warning("skipping labels message at partition %s offset %s: %s",
                         msg.partition(), msg.offset(), exc)
            continue
        if request_id in wanted:
            labels[request_id] = body.get("label")
    return labels
