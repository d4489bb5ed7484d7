"""`tidelog serve`: consume requests, predict, produce results, exactly once per request.

Each batch is one Kafka transaction: begin, produce every result, send the consumer's
next offsets into the transaction, commit. Results and offsets become visible together
(to `isolation.level=read_committed` readers) or not at all, so a worker killed at any
point is resumed by the next one from the last committed batch: the next worker's
`init_transactions` (same transactional id) aborts what the dead one left open.

The model is switched only between batches: a batch is answered by one loaded version,
and its results all name it. The alias is looked at between batches, at most every
`alias_interval` seconds (one registry call); a new version is loaded before it serves.
SIGTERM finishes the batch in hand (commit, or abort on error), then the worker exits.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

from confluent_kafka import KafkaError, TopicPartition

from serving.batch import (
    AliasCheck,
    Message,
    commit_offsets,
    rewind_offsets,
    serve_batch,
    should_switch,
)
from serving.contract import encode
from serving.metrics import ServingMetrics, serve_metrics
from serving.model import Registry, ServedModel
from tidelog.adapters.kafka import KafkaAdmin, Transactions, broker_error, consumer, kafka_errors
from tidelog.crashpoints import crash_point
from tidelog.errors import BrokerError, ConfigError, TidelogError
from tidelog.settings import KafkaValue, Settings
from tidelog.topics import serving_requests_topic, serving_results_topic

__all__ = ["WorkerConfig", "Worker", "check_model_name"]

_LOG = logging.getLogger("tidelog.serve")
_TOPIC_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
# Consecutive failed batches (each aborted and retried) before the worker gives up.
MAX_FAILED_BATCHES = 20


def check_model_name(name: str) -> str:
    """Kafka topic names take [A-Za-z0-9._-]; a model served over the broker must fit."""
    if not name or not set(name) <= _TOPIC_SAFE or len(name) > 200:
        raise ConfigError(
            f"model name {name!r} cannot be part of a Kafka topic name (letters, digits, "
            "'.', '_' and '-' only, at most 200): register the model under such a name to "
            "serve it over the broker, or use POST /models/{name}/predict", model=name)
    return name


@dataclass(frozen=True)
class WorkerConfig:
    model: str
    alias: str = "champion"
    batch_size: int = 100
    max_wait_ms: int = 50
    alias_interval: float = 5.0  # seconds between looks at the alias
    worker_id: str = "0"  # part of the transactional id: one per concurrent worker
    partitions: int = 3  # for the requests and results topics, when they do not exist
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None

    def __post_init__(self) -> None:
        check_model_name(self.model)
        if not 1 <= self.batch_size <= 100_000:
            raise ConfigError(f"--batch-size {self.batch_size} must be 1..100000")
        if not 0 <= self.max_wait_ms <= 60_000:
            raise ConfigError(f"--max-wait-ms {self.max_wait_ms} must be 0..60000")
        if not 1 <= self.partitions <= 10_000:
            raise ConfigError(f"--partitions {self.partitions} must be 1..10000")
        if not set(self.worker_id) <= _TOPIC_SAFE or not self.worker_id:
            raise ConfigError(f"--worker-id {self.worker_id!r}: letters, digits, '.', '_', '-'")


class Worker:
    def __init__(self, settings: Settings, config: WorkerConfig, *,
                 registry: Registry | None = None, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.settings = settings
        self.config = config
        prefix = settings.topic_prefix
        self.requests_topic = serving_requests_topic(prefix, config.model)
        self.results_topic = serving_results_topic(prefix, config.model)
        self.group_id = f"tidelog-serve.{prefix}.{config.model}"
        self.transactional_id = f"{self.group_id}.{config.worker_id}"
        self.registry = registry or Registry(settings)
        self.metrics = ServingMetrics(config.model, config.alias)
        self.alias_check = AliasCheck(config.alias_interval)
        self.clock = clock
        self.model: ServedModel | None = None
        self.stopping = False
        self._consumer: Any = None
        self._tx: Transactions | None = None
        self._servers = settings.bootstrap_servers
        self._metrics_server: Any = None

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Topics, model, transactions, subscription: everything before the first batch."""
        KafkaAdmin.for_settings(self.settings).ensure_topics(
            [self.requests_topic, self.results_topic], self.config.partitions)
        self.model = self.registry.load(self.config.model, self.config.alias)
        self.alias_check.done(self.clock())
        self.metrics.set_version(self.model.version)
        self._tx = Transactions(self.settings.kafka_config(), self.transactional_id)
        self._tx.init()  # fences an older worker of this id, aborts what it left open
        options: dict[str, KafkaValue] = {
            "group.id": self.group_id,
            "isolation.level": "read_committed",  # never an open or aborted batch's results
            "enable.auto.commit": False,  # offsets commit inside each batch's transaction
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            "enable.partition.eof": False,
            # A broker may hold a fetch for this long before answering, new data or not
            # (Tansu does: with librdkafka's 500 ms default, a request waited 0-500 ms
            # before the worker even saw it). Bounded by the batch wait.
            "fetch.wait.max.ms": max(10, min(500, self.config.max_wait_ms)),
        }
        self._consumer = consumer(self.settings.kafka_config(**options))
        with kafka_errors(f"subscribe to {self.requests_topic}", self._servers):
            self._consumer.subscribe([self.requests_topic])
        if self.config.metrics_port is not None:
            self._metrics_server = serve_metrics(self.metrics, self.config.metrics_host,
                                                 self.config.metrics_port)
        _LOG.info("serving %s version %s (run %s) from %s to %s", self.config.model,
                  self.model.version, self.model.target.run_id, self.requests_topic,
                  self.results_topic)

    def close(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close()
            except Exception as exc:  # noqa: BLE001 - closing after a failure
                _LOG.warning("closing the consumer: %s", exc)
            self._consumer = None
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server = None

    def stop(self, *_: Any) -> None:
        """Finish the batch in hand, then leave `run` (a signal handler)."""
        self.stopping = True

    def run(self, *, max_batches: int | None = None) -> int:
        """Serve until stopped (SIGTERM, SIGINT) or `max_batches`; the batches served."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM,
                                                                   signal.SIGINT)}
        served = 0
        failures = 0
        try:
            self.start()
            while not self.stopping and (max_batches is None or served < max_batches):
                try:
                    if self.step():
                        served += 1
                    failures = 0
                except BrokerError as exc:
                    failures += 1
                    if exc.details.get("fatal") or failures >= MAX_FAILED_BATCHES:
                        raise
                    _LOG.warning("batch aborted, retrying (%d): %s", failures, exc.message)
                    time.sleep(min(0.2 * failures, 5.0))
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.close()
        return served

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        _LOG.info("signal %d: finishing the batch in hand, then stopping", signum)
        self.stop()

    # -- one batch ------------------------------------------------------------------

    def maybe_switch(self) -> bool:
        """Between batches: load the alias's version if it moved. True when switched."""
        now = self.clock()
        if self.model is None or not self.alias_check.due(now):
            return False
        self.alias_check.done(now)
        try:
            pointed = self.registry.alias_version(self.config.model, self.config.alias)
            if not should_switch(self.model.version, pointed):
                return False
            loaded = self.registry.load(self.config.model, self.config.alias)
        except TidelogError as exc:
            # The version in hand is still a registered, named one: keep serving it.
            _LOG.warning("cannot check %s@%s, still serving version %s: %s",
                         self.config.model, self.config.alias, self.model.version,
                         exc.message)
            return False
        _LOG.info("%s@%s moved: version %s -> %s (run %s)", self.config.model,
                  self.config.alias, self.model.version, loaded.version,
                  loaded.target.run_id)
        self.model = loaded
        self.metrics.set_version(loaded.version)
        return True

    def poll(self) -> list[Message]:
        assert self._consumer is not None
        with kafka_errors(f"consume {self.requests_topic}", self._servers):
            raw = self._consumer.consume(num_messages=self.config.batch_size,
                                         timeout=self.config.max_wait_ms / 1000.0)
        batch = []
        for m in raw:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                raise broker_error(err, f"consume {self.requests_topic}", self._servers)
            batch.append(Message(m.topic(), m.partition(), m.offset(), m.key(), m.value()))
        return batch

    def step(self) -> int:
        """One batch: the number of requests answered (0 when none arrived)."""
        self.maybe_switch()
        batch = self.poll()
        if not batch:
            return 0
        received = time.perf_counter()
        model, tx = self.model, self._tx
        assert model is not None and tx is not None
        tx.begin()
        try:
            results = serve_batch(batch, model, received=received)
            for request, result in results:
                tx.produce(self.results_topic, request.request_id.encode(), encode(result))
            tx.flush()
            crash_point("serve.before_commit")
            tx.commit(commit_offsets(batch), self._consumer.consumer_group_metadata())
        except BaseException:
            self._abort(batch)
            raise
        self.metrics.served(model.version, [r["latency_ms"] / 1000.0 for _, r in results],
                            [r["error"]["code"] for _, r in results if r["error"]])
        return len(batch)

    def _abort(self, batch: list[Message]) -> None:
        """Abort the open transaction and rewind, so the batch is read and answered again
        (by this worker on retry, or by the next one)."""
        assert self._tx is not None
        self.metrics.aborted()
        try:
            self._tx.abort()
        except BrokerError as exc:
            _LOG.warning("aborting the transaction failed: %s", exc.message)
        try:
            for t, p, o in rewind_offsets(batch):
                self._consumer.seek(TopicPartition(t, p, o))
        except Exception as exc:  # noqa: BLE001 - a revoked partition: the group rewinds
            _LOG.warning("rewinding after an abort: %s", exc)
