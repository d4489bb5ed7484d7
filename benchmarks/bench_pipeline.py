"""Issue 2 benchmark: Postgres commit -> Debezium/Connect -> broker -> decoded ChangeEvent.

Starts its own local stack in a temporary TIDELOG_HOME (so cold start is measured), then:
  * 100k rows in one transaction, and 100k rows in 1,000 transactions: events/s from the
    commit to the last decoded ChangeEvent in Python;
  * decoding alone (the same raw messages again, one core): events/s;
  * the broker's own produce and consume rate with messages of the same size (ceiling);
  * RSS of each component.

    .venv/bin/python benchmarks/bench_pipeline.py [--rows 100000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import psycopg
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from cdc.connector import ConnectorSpec, apply
from cdc.events import ChangeEvent, decode_message
from tidelog import stack
from tidelog.settings import load_settings

QUIET = logging.getLogger("bench.kafka")
QUIET.addHandler(logging.NullHandler())
QUIET.propagate = False


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children, in MiB."""
    total = 0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def consume_until(bootstrap: str, topic: str, start: int, count: int
                  ) -> tuple[float, list[tuple[bytes | None, bytes | None, int]]]:
    """Consume `count` messages from offset `start`, decoding each; return end time + raw."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench",
                         "enable.auto.commit": False, "fetch.max.bytes": 64 << 20,
                         "max.partition.fetch.bytes": 16 << 20}, logger=QUIET)
    consumer.assign([TopicPartition(topic, 0, start)])
    raw = []
    got = 0
    while got < count:
        # short waits: consume() blocks until the batch is full or the wait is over
        for msg in consumer.consume(10_000, timeout=0.05):
            if msg.error():
                continue
            event = decode_message(msg.topic(), msg.partition(), msg.offset(), msg.key(),
                                   msg.value())
            if isinstance(event, ChangeEvent):
                got += 1
            raw.append((msg.key(), msg.value(), msg.offset()))
    end = time.perf_counter()
    consumer.close()
    return end, raw


def end_offset(bootstrap: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-end",
                         "enable.partition.eof": True, "enable.auto.commit": False},
                        logger=QUIET)
    consumer.assign([TopicPartition(topic, 0, 0)])
    last = 0
    while True:
        batch = consumer.consume(10_000, timeout=2)
        if not batch:
            break
        done = False
        for msg in batch:
            if msg.error() and msg.error().code() == KafkaError._PARTITION_EOF:
                done = True
            elif not msg.error():
                last = msg.offset() + 1
        if done:
            break
    consumer.close()
    return last


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="tidelog-bench-"))
    home.chmod(0o755)
    t0 = time.perf_counter()
    status = stack.up(home)
    cold = time.perf_counter() - t0
    print(f"stack cold start (first ever, builds the Connect classpath): {cold:.1f} s")
    try:
        settings = load_settings(home)
        rss = {n: rss_mb(int(c["pid"])) for n, c in status.components.items()}
        table = "public.bench_events"
        with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
            conn.execute(f"create table {table} (id bigint primary key, name text, "
                         "amount numeric(12, 2), at timestamptz, doc jsonb, ok boolean)")
        spec = ConnectorSpec("bench", (table,), "bench")
        apply(settings, spec)
        topic = spec.topic(table)
        results: dict[str, list[float]] = {"one transaction": [], "1,000 transactions": []}
        decode_rates: list[float] = []
        raw_sample: list[tuple[bytes | None, bytes | None, int]] = []
        next_id = 0
        for _ in range(args.repeat):
            for label, per_tx in (("one transaction", args.rows),
                                  ("1,000 transactions", max(1, args.rows // 1000))):
                start = end_offset(settings.bootstrap_servers, topic)
                with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
                    t_begin = time.perf_counter()
                    for lo in range(next_id, next_id + args.rows, per_tx):
                        conn.execute(
                            f"insert into {table} select g, 'customer ' || g, g * 0.01, "
                            "now(), jsonb_build_object('g', g), g %% 2 = 0 "
                            "from generate_series(%s::bigint, %s::bigint) g",
                            (lo, min(lo + per_tx, next_id + args.rows) - 1))
                    t_commit = time.perf_counter()
                end, raw = consume_until(settings.bootstrap_servers, topic, start, args.rows)
                next_id += args.rows
                results[label].append(args.rows / (end - t_commit))
                raw_sample = raw
                print(f"  {label}: {args.rows / (end - t_commit):,.0f} events/s commit->decoded"
                      f" (commit took {t_commit - t_begin:.2f} s)")
            t = time.perf_counter()
            for key, value, offset in raw_sample:
                decode_message(topic, 0, offset, key, value)
            decode_rates.append(len(raw_sample) / (time.perf_counter() - t))
        # broker ceiling: produce/consume messages of the same size
        size = int(statistics.median(len(v or b"") for _, v, _ in raw_sample))
        payload = b"x" * size
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers}, logger=QUIET)
        for future in admin.create_topics([NewTopic("bench.ceiling", 1, 1)]).values():
            future.result(timeout=30)
        producer = Producer({"bootstrap.servers": settings.bootstrap_servers,
                             "linger.ms": 20, "batch.size": 1 << 20}, logger=QUIET)
        n = args.rows
        t = time.perf_counter()
        for i in range(n):
            while True:
                try:
                    producer.produce("bench.ceiling", payload, key=str(i).encode())
                    break
                except BufferError:
                    producer.poll(0.01)
        producer.flush()
        produce_rate = n / (time.perf_counter() - t)
        consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers,
                             "group.id": "ceiling", "enable.auto.commit": False}, logger=QUIET)
        consumer.assign([TopicPartition("bench.ceiling", 0, 0)])
        got = 0
        t = time.perf_counter()
        while got < n:
            got += sum(1 for m in consumer.consume(10_000, timeout=0.05) if not m.error())
        consume_rate = n / (time.perf_counter() - t)
        consumer.close()
        print()
        print(f"rows per run: {args.rows:,}; repeats: {args.repeat}; median message "
              f"{size:,} bytes (JSON with schemas)")
        for label, rates in results.items():
            print(f"commit -> decoded ChangeEvent, {label}: median "
                  f"{statistics.median(rates):,.0f} events/s")
        print(f"decode_message alone (one core): median {statistics.median(decode_rates):,.0f}"
              " events/s")
        print(f"broker ceiling (Tansu, same size): produce {produce_rate:,.0f} msg/s, "
              f"consume {consume_rate:,.0f} msg/s")
        t = time.perf_counter()
        stack.down(home)
        down = time.perf_counter() - t
        t = time.perf_counter()
        stack.up(home)
        warm = time.perf_counter() - t
        print(f"stack start with cached classpath and existing Postgres data: {warm:.1f} s "
              f"(stop took {down:.1f} s)")
        print("RSS after start (MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in rss.items()))
    finally:
        stack.down(home)


if __name__ == "__main__":
    main()
