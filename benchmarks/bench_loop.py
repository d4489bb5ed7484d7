"""Benchmark: the loop that runs itself (issue 14), on the real stack.

    .venv/bin/python benchmarks/bench_loop.py [--home DIR] [--rounds 5] [--rows 50]
                                              [--customers 300] [--interval 1.0]
                                              [--idle-events 2000] [--json]

Sets up (not timed) the demo shop (`examples.shop`) captured by Debezium under its own topic
prefix, a pipeline file (recipe `examples.churn:train`, a `changed_rows >= --rows` trigger,
a drift trigger at 0.99, a gate every model passes) and its worker,
`tidelog pipeline run FILE --follow --interval I`, in a subprocess with events on. The
worker's first cycle trains and promotes the first model (no champion yet: every row
counts); that cycle is reported, not timed. Then:

1. latency, `--rounds` times: one transaction updates `--rows` customers (the commit that
   crosses the threshold); measured from the moment the commit returns to the `ce_time`
   of the `dataset.ready` event of the worker's new snapshot and of the `model.promoted`
   event of its model. Both clocks are this machine's. The worker notices changed rows
   when it next evaluates, so the figures include up to one `--interval` of waiting.
2. throughput when nothing needs training: `--idle-events` `drift.detected` events for the
   pipeline's model with a score under its threshold, produced in one batch; measured from
   the first produce to the moment the worker's consumer group has committed them all
   (the worker commits only when no signal is waiting, i.e. when it has decided on them).

Prints medians (and every round). Without --home it starts its own stack in a temporary
TIDELOG_HOME and stops it at the end; with --home it uses that running stack and drops
what it created.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import os
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

PIPELINE = """
name = "{name}"
recipe = "examples.churn:train"
tables = {tables}
model = "{model}"
seed = 1

[params]
model = "forest"
n_estimators = 20
max_depth = 6

[[triggers]]
kind = "changed_rows"
min_rows = {rows}

[[triggers]]
kind = "drift"
threshold = 0.99

[[gate]]
metric = "accuracy"
min_absolute_change = -1.0
"""


def _time(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _env(settings: Any) -> dict[str, str]:
    values = {"TIDELOG_HOME": str(settings.home), "TIDELOG_POSTGRES_DSN": settings.postgres_dsn,
              "TIDELOG_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
              "TIDELOG_CONNECT_URL": settings.connect_url,
              "TIDELOG_MLFLOW_URI": settings.mlflow_uri,
              "TIDELOG_TOPIC_PREFIX": settings.topic_prefix,
              "TIDELOG_CONNECTOR_NAME": settings.connector_name,
              "TIDELOG_ARCHIVE_ROOT": settings.archive_root,
              "TIDELOG_SNAPSHOT_ROOT": settings.snapshot_root, "TIDELOG_EVENTS": "on",
              "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
    return {**{k: v for k, v in os.environ.items() if not k.startswith("TIDELOG_")}, **values}


def _wait_for(settings: Any, kind: str, after: float, match: Callable[[Any], bool],
              timeout: float) -> Any:
    """The first event of `kind` published at or after `after` (epoch s) that matches."""
    from pipelines.feed import read_events
    from tidelog.events import EVENT_TYPES

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in read_events(settings, [EVENT_TYPES[kind].category]):
            if event.kind == kind and _time(event.time) >= after and match(event):
                return event
        time.sleep(0.2)
    raise SystemExit(f"no {kind} event within {timeout:.0f}s; see the worker log")


def _committed(settings: Any, group: str, topic: str) -> int:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(settings.kafka_config(**{"group.id": group,
                                                 "enable.auto.commit": False}))
    try:
        [part] = consumer.committed([TopicPartition(topic, 0)], timeout=10)
        return max(part.offset, 0)
    finally:
        consumer.close()


def _idle_throughput(settings: Any, pipeline: str, model: str, count: int,
                     say: Callable[[str], None]) -> dict[str, Any]:
    from confluent_kafka import Producer

    from tidelog.events import ensure_topics, event_topic, new_event

    topic = event_topic(settings, "drift")
    group = f"tidelog-pipeline-{pipeline}"
    ensure_topics(settings, [topic])
    # Only this benchmark writes this prefix's drift topic: the group is done at before+count.
    end = _committed(settings, group, topic) + count
    producer = Producer(settings.kafka_config(**{"linger.ms": 5, "acks": "all"}))
    stamp = time.time()
    began = time.perf_counter()
    for i in range(count):
        at = dt.datetime.fromtimestamp(stamp + i / 1e6, dt.UTC).isoformat(
            timespec="microseconds").replace("+00:00", "Z")
        event = new_event(settings, "drift.detected", model, {
            "model": model, "score": 0.1, "metric": "drift", "version": None,
            "detected_at": at, "details": {"reason": f"bench {i}"}},
            (model, "", "drift", "0.1", at), "bench", time=at)
        key, value, headers = event.to_kafka()
        producer.produce(topic, value=value, key=key, headers=headers)
        producer.poll(0)
    producer.flush(60)
    produced = time.perf_counter() - began
    deadline = time.monotonic() + 600
    while _committed(settings, group, topic) < end:
        if time.monotonic() > deadline:
            raise SystemExit(f"the worker did not commit {topic} up to {end} in 600 s")
        time.sleep(0.1)
    handled = time.perf_counter() - began
    say(f"idle: {count} drift events produced in {produced:.2f}s, handled (committed) "
        f"after {handled:.2f}s: {count / handled:,.0f} events/s")
    return {"events": count, "produce_seconds": round(produced, 3),
            "handled_seconds": round(handled, 3),
            "events_per_second": round(count / handled, 1)}


def _run(settings: Any, scratch: Path, args: argparse.Namespace,
         say: Callable[[str], None]) -> dict[str, Any]:
    import psycopg

    from cdc.connector import ConnectorSpec, apply, delete
    from examples.shop import Shop
    from tidelog.demo.capture import wait_for_capture

    stamp = f"{os.getpid() % 10000}x{int(time.time()) % 100000}"
    name = f"benchloop{stamp}"
    local = dataclasses.replace(settings, topic_prefix=name, connector_name=name, events=True)
    shop = Shop(settings.require("postgres_dsn"), f"bench_loop_{stamp}")
    spec = ConnectorSpec(name, shop.tables, name)
    worker: subprocess.Popen[bytes] | None = None
    try:
        began = time.perf_counter()
        shop.load(args.customers)
        apply(local, spec, timeout=300)
        wait_for_capture(local, dict(shop.events), timeout=300, interval=2.0)
        say(f"shop captured in {time.perf_counter() - began:.1f}s "
            f"({sum(shop.events.values())} events)")
        model = f"bench-loop-{stamp}"
        path = scratch / f"{name}.toml"
        path.write_text(PIPELINE.format(name=name, model=model, tables=list(shop.tables),
                                        rows=args.rows).replace("'", '"'))
        log = open(scratch / "worker.log", "wb")
        started = time.time()
        worker = subprocess.Popen(
            [sys.executable, "-m", "tidelog.cli", "pipeline", "run", str(path), "--follow",
             "--interval", str(args.interval), "--app-dir", str(ROOT), "--json"],
            cwd=ROOT, env=_env(local), stdout=log, stderr=subprocess.STDOUT)
        first = _wait_for(local, "model.promoted", started, lambda e: e.subject == model, 600)
        say(f"first cycle (worker start, no champion: snapshot, train, gate, promote): "
            f"{_time(first.time) - started:.1f}s")

        ready_s: list[float] = []
        promoted_s: list[float] = []
        customers = f"{shop.schema}.customers"
        for i in range(args.rounds):
            offset = i * args.rows % max(1, args.customers - args.rows)
            with psycopg.connect(settings.require("postgres_dsn")) as conn:
                conn.execute(f"update {customers} set marketing_opt_in = not marketing_opt_in "
                             f"where id > %s and id <= %s", (offset, offset + args.rows))
                conn.commit()
                committed = time.time()
            shop.events[customers] += args.rows
            ready = _wait_for(local, "dataset.ready", committed,
                              lambda e: set(e.data["tables"]) == set(shop.tables), 600)
            promoted = _wait_for(local, "model.promoted", committed,
                                 lambda e: e.subject == model, 600)
            ready_s.append(_time(ready.time) - committed)
            promoted_s.append(_time(promoted.time) - committed)
            say(f"round {i + 1}: commit -> dataset.ready {ready_s[-1]:.2f}s, "
                f"-> model.promoted {promoted_s[-1]:.2f}s (version "
                f"{promoted.data['version']})")
            time.sleep(args.interval)  # the worker is idle again before the next commit
        idle = _idle_throughput(local, name, model, args.idle_events, say)
        return {"rounds": args.rounds, "rows_per_commit": args.rows,
                "interval_seconds": args.interval, "customers": args.customers,
                "first_cycle_seconds": round(_time(first.time) - started, 3),
                "dataset_ready_seconds": [round(v, 3) for v in ready_s],
                "promoted_seconds": [round(v, 3) for v in promoted_s],
                "dataset_ready_median": round(statistics.median(ready_s), 3),
                "promoted_median": round(statistics.median(promoted_s), 3), "idle": idle}
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
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rows", type=int, default=50,
                        help="rows per commit, and the changed_rows threshold")
    parser.add_argument("--customers", type=int, default=300)
    parser.add_argument("--interval", type=float, default=1.0,
                        help="the worker's seconds between evaluations")
    parser.add_argument("--idle-events", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    say = (lambda text: print(text, file=sys.stderr, flush=True)) if args.json else print

    from tidelog import stack
    from tidelog.settings import load_settings

    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    own = args.home is None
    home = Path(args.home or tempfile.mkdtemp(prefix="tlloop-home-")).absolute()
    if own:
        home.chmod(0o755)  # the postgres user must reach its data directory
    os.environ["TIDELOG_HOME"] = str(home)
    scratch = Path(tempfile.mkdtemp(prefix="tlloop-scratch-"))
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

    say("")
    say(f"commit crossing changed_rows >= {args.rows} -> dataset.ready: median "
        f"{result['dataset_ready_median']:.2f}s; -> model.promoted: median "
        f"{result['promoted_median']:.2f}s ({args.rounds} rounds, worker interval "
        f"{args.interval:g}s)")
    say(f"worker, nothing to train: {result['idle']['events_per_second']:,.0f} events/s")
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
