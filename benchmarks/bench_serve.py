"""Benchmark: the serving worker (issue 15), on the real stack.

    .venv/bin/python benchmarks/bench_serve.py [--home DIR] [--requests 20000]
                                               [--batch-size 200] [--max-wait-ms 20]
                                               [--partitions 3] [--customers 300] [--json]

Sets up (not timed) the demo shop (`examples.shop`) captured by Debezium under its own topic
prefix, trains `examples.churn:train` (logistic regression) on a snapshot of it, registers
the model and points `champion` at it, and starts `tidelog serve --model M` in a
subprocess. Then produces `--requests` requests as fast as the producer goes (one
instance each, six float features) and reads the results topic with a read_committed
consumer in this process, until every request has its result.

Prints:
- throughput: requests / (first produce -> last result consumed);
- end-to-end latency per request, from its produce call to its result being consumed by
  the reader (both clocks this process's), p50 / p95 / p99;
- the worker's own latency (`latency_ms` of the results: batch arrival to result), p50 /
  p95 / p99.

The requests are produced in one burst, so the end-to-end figures include queueing behind
earlier requests: they describe a saturated worker. `--rate` spreads them out instead.
Without --home it starts its own stack in a temporary TIDELOG_HOME and stops it at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

__all__ = ["main"]


def _env(settings: Any) -> dict[str, str]:
    values = {"TIDELOG_HOME": str(settings.home),
              "TIDELOG_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
              "TIDELOG_MLFLOW_URI": settings.mlflow_uri,
              "TIDELOG_TOPIC_PREFIX": settings.topic_prefix,
              "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
    return {**{k: v for k, v in os.environ.items() if not k.startswith("TIDELOG_")}, **values}


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summary(values: list[float]) -> dict[str, float]:
    return {"p50": round(_quantile(values, 0.50), 2), "p95": round(_quantile(values, 0.95), 2),
            "p99": round(_quantile(values, 0.99), 2), "max": round(max(values), 2),
            "mean": round(statistics.fmean(values), 2)}


def _measure(settings: Any, model: str, args: argparse.Namespace,
             say: Callable[[str], None], stem: str = "b") -> dict[str, Any]:
    from confluent_kafka import Consumer, Producer, TopicPartition

    from tidelog.adapters.kafka import KafkaAdmin
    from tidelog.topics import serving_requests_topic, serving_results_topic

    requests_topic = serving_requests_topic(settings.topic_prefix, model)
    results_topic = serving_results_topic(settings.topic_prefix, model)
    admin = KafkaAdmin.for_settings(settings)
    admin.ensure_topics([requests_topic, results_topic], args.partitions)
    reader = Consumer(settings.kafka_config(**{
        "group.id": f"bench-reader-{os.getpid()}", "isolation.level": "read_committed",
        "enable.auto.commit": False, "fetch.wait.max.ms": 5}))
    reader.assign([TopicPartition(t, p, 0) for t, p in admin.partitions([results_topic])])
    rng = random.Random(0)
    bodies = []
    for i in range(args.requests):
        instance = {"tenure_days": float(rng.randint(0, 900)),
                    "n_subscriptions": float(rng.randint(0, 4)),
                    "mean_fee": round(rng.uniform(5, 60), 2),
                    "n_payments": float(rng.randint(0, 30)),
                    "failed_ratio": round(rng.random(), 3),
                    "total_paid": round(rng.uniform(0, 900), 2)}
        bodies.append((f"{stem}{i}", json.dumps({"instance": instance}).encode()))
    producer = Producer(settings.kafka_config(**{"linger.ms": 2, "acks": "all"}))
    sent: dict[str, float] = {}
    done: dict[str, float] = {}
    worker_ms: list[float] = []
    versions: set[str] = set()
    errors = 0
    gap = 1.0 / args.rate if args.rate else 0.0
    began = time.perf_counter()
    deadline = time.monotonic() + 900

    def drain(wait: float) -> None:
        nonlocal errors
        for m in reader.consume(num_messages=1000, timeout=wait):
            if m.error():
                continue
            now = time.perf_counter()
            value = json.loads(m.value())
            rid = value["request_id"]
            if rid in done or rid not in sent:
                continue  # a duplicate (see docs/serving.md), or the warm-up's
            done[rid] = now
            worker_ms.append(float(value["latency_ms"]))
            versions.add(value["model"]["version"])
            errors += value["error"] is not None

    for i, (key, body) in enumerate(bodies):
        sent[key] = time.perf_counter()
        producer.produce(requests_topic, key=key.encode(), value=body)
        producer.poll(0)
        if gap:
            next_at = began + (i + 1) * gap
            while time.perf_counter() < next_at:
                drain(0.0005)
        elif i % 1000 == 999:
            drain(0.0)
    producer.flush(60)
    produced = time.perf_counter() - began
    while len(done) < len(bodies):
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(done)} of {len(bodies)} results within 900 s")
        drain(0.1)
    total = max(done.values()) - began
    reader.close()
    e2e = [(done[k] - sent[k]) * 1000.0 for k in sent]
    result = {"requests": len(bodies), "produce_seconds": round(produced, 3),
              "total_seconds": round(total, 3),
              "requests_per_second": round(len(bodies) / total, 1),
              "end_to_end_ms": _summary(e2e), "worker_ms": _summary(worker_ms),
              "errors": errors, "versions": sorted(versions)}
    say(f"{len(bodies)} requests produced in {produced:.2f}s; all answered after "
        f"{total:.2f}s: {len(bodies) / total:,.0f} requests/s")
    say(f"end to end (produce -> result consumed), ms: {result['end_to_end_ms']}")
    say(f"worker latency_ms (batch arrival -> result): {result['worker_ms']}")
    return result


def _run(settings: Any, scratch: Path, args: argparse.Namespace,
         say: Callable[[str], None]) -> dict[str, Any]:
    from cdc.connector import ConnectorSpec, apply, delete
    from examples.shop import Shop
    from pipelines.registry import Registry
    from tidelog.demo.capture import wait_for_capture
    from trainer.train import train

    stamp = f"{os.getpid() % 10000}x{int(time.time()) % 100000}"
    name = f"benchserve{stamp}"
    local = dataclasses.replace(settings, topic_prefix=name, connector_name=name)
    shop = Shop(settings.require("postgres_dsn"), f"bench_serve_{stamp}")
    spec = ConnectorSpec(name, shop.tables, name)
    worker: subprocess.Popen[bytes] | None = None
    try:
        shop.load(args.customers)
        apply(local, spec, timeout=300)
        wait_for_capture(local, dict(shop.events), timeout=300, interval=2.0)
        model = f"bench-serve-{stamp}"
        trained = train(local, "examples.churn:train", at="latest", tables=shop.tables,
                        params={"model": "logreg"}, seed=1, register=model)
        Registry(local, "tidelog").set_alias(model, "champion",
                                             str(trained.registered_version))
        say(f"model {model} version {trained.registered_version} trained on snapshot "
            f"{trained.snapshot_id}")
        log = open(scratch / "worker.log", "wb")
        worker = subprocess.Popen(
            [sys.executable, "-m", "tidelog.cli", "serve", "--model", model,
             "--batch-size", str(args.batch_size), "--max-wait-ms", str(args.max_wait_ms),
             "--partitions", str(args.partitions)],
            cwd=ROOT, env=_env(local), stdout=log, stderr=subprocess.STDOUT)
        # Warm up (not timed): model loaded, group joined, first transaction done.
        warm = argparse.Namespace(**{**vars(args), "requests": 50, "rate": 0.0})
        _measure(local, model, warm, lambda _: None, stem="warm")
        return {"batch_size": args.batch_size, "max_wait_ms": args.max_wait_ms,
                "partitions": args.partitions, "rate": args.rate,
                **_measure(local, model, args, say)}
    finally:
        if worker is not None:
            worker.terminate()
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(timeout=30)
        delete(local, spec, drop_slot=True)
        shop.drop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", help="use the stack of this TIDELOG_HOME (default: own)")
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--max-wait-ms", type=int, default=20)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--rate", type=float, default=0.0,
                        help="requests per second to produce at (default: as fast as possible)")
    parser.add_argument("--customers", type=int, default=300)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    say = (lambda text: print(text, file=sys.stderr, flush=True)) if args.json else print

    from tidelog import stack
    from tidelog.settings import load_settings

    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    own = args.home is None
    home = Path(args.home or tempfile.mkdtemp(prefix="tlserve-home-")).absolute()
    if own:
        home.chmod(0o755)  # the postgres user must reach its data directory
    os.environ["TIDELOG_HOME"] = str(home)
    scratch = Path(tempfile.mkdtemp(prefix="tlserve-scratch-"))
    try:
        if own:
            began = time.perf_counter()
            stack.up(home)
            say(f"stack up in {time.perf_counter() - began:.1f}s at {home}")
        result = _run(load_settings(home), scratch, args, say)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if own:
            stack.down(home)
            shutil.rmtree(home, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
