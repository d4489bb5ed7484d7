"""Issue 3 benchmark, side by side in one process:

* snapshot of a 1M-row table from 3M archived change events (materialise -> Parquet ->
  digest, i.e. what `tidelog snapshot create` does after the archive) versus exporting the
  same final table straight from Postgres (`COPY ... TO STDOUT` -> Arrow -> Parquet);
* the archiver: Debezium envelopes on the broker -> typed Parquet segments, events/s.

It starts a private Postgres and a Tansu broker in a temporary directory.

    .venv/bin/python benchmarks/bench_snapshot.py [--keys 1000000] [--events 3000000]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import polars as pl
import psycopg
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_materialise import generate  # noqa: E402

from snapshotter.archive import Archive, archive_topics  # noqa: E402
from snapshotter.digest import table_digest  # noqa: E402
from snapshotter.materialise import materialise  # noqa: E402
from tidelog.settings import Settings  # noqa: E402
from tidelog.stack.broker import start_broker  # noqa: E402
from tidelog.stack.postgres import postgres_dsn, start_postgres  # noqa: E402
from tidelog.stack.process import free_port, stop  # noqa: E402

PG_TYPES = {pl.Int64: "bigint", pl.Int32: "int", pl.Float64: "double precision",
            pl.Boolean: "boolean", pl.String: "text", pl.Date: "date"}


def pg_type(dtype: pl.DataType) -> str:
    if isinstance(dtype, pl.Decimal):
        return f"numeric({dtype.precision}, {dtype.scale})"
    if isinstance(dtype, pl.Datetime):
        return "timestamptz" if dtype.time_zone else "timestamp"
    return PG_TYPES.get(type(dtype), PG_TYPES.get(dtype, "text"))  # type: ignore[call-overload]


def snapshot_once(segments: list[str], out: Path) -> float:
    t = time.perf_counter()
    state = materialise([pl.scan_parquet(s) for s in segments], keep_key=True)
    state.write_parquet(out, compression="zstd")
    table_digest(duckdb.connect(), f"(select * exclude (__key) from read_parquet('{out}'))")
    return time.perf_counter() - t


def export_once(dsn: str, out: Path) -> float:
    t = time.perf_counter()
    buf = io.BytesIO()
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        with cur.copy("copy bench_final to stdout (format csv, header true)") as copy:
            for chunk in copy:
                buf.write(chunk)
    buf.seek(0)
    table = pacsv.read_csv(buf)
    pq.write_table(table, out, compression="zstd")
    return time.perf_counter() - t


def archiver_rate(root: Path, messages: int) -> tuple[float, float]:
    """Produce real Debezium envelopes (recorded fixture, varying ids), archive them."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    broker, bootstrap = start_broker(root / "broker", free_port())
    try:
        settings = Settings(home=root, bootstrap_servers=bootstrap, topic_prefix="bench",
                            archive_root=str(root / "archive"))
        topic = "bench.public.t1"
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for f in admin.create_topics([NewTopic(topic, 1, 1)]).values():
            f.result(30)
        fixture = Path(__file__).resolve().parents[1] / "tests/fixtures/recorded"
        msg = json.loads((fixture / "rec_public_t1_002_c.json").read_text())
        head, tail = msg["value"].split('"after":{"id":2', 1)
        key_head, key_tail = msg["key"].rsplit('"payload":{"id":2}', 1)
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
        for i in range(messages):
            value = f'{head}"after":{{"id":{i}{tail}'.encode()
            while True:
                try:
                    producer.produce(topic, value,
                                     key=f'{key_head}"payload":{{"id":{i}}}{key_tail}'.encode())
                    break
                except BufferError:
                    producer.poll(0.01)
        producer.flush()
        from cdc.reader import read_range

        t = time.perf_counter()
        consumed = sum(len(b) for b in read_range(settings, {(topic, 0): 0}))
        consume_rate = consumed / (time.perf_counter() - t)
        t = time.perf_counter()
        marks = archive_topics(settings, [topic], archive=Archive(settings.archive_root))
        elapsed = time.perf_counter() - t
        assert marks[(topic, 0)] == messages, marks
        return messages / elapsed, consume_rate
    finally:
        stop(broker)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=3_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--archive-messages", type=int, default=200_000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="tidelog-bench-snap-"))
    root.chmod(0o755)
    layout = generate(root, args.keys, args.events)
    segments = layout["segments"]
    final = materialise([pl.scan_parquet(s) for s in segments])
    port = free_port()
    pg = start_postgres(root / "pg", port)
    try:
        dsn = postgres_dsn(port)
        columns = ", ".join(f'"{c}" {pg_type(t)}' for c, t in final.schema.items())
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"create table bench_final ({columns})")
            with conn.cursor().copy("copy bench_final from stdin (format csv)") as copy:
                copy.write(final.write_csv(include_header=False).encode())
            conn.execute("vacuum analyze bench_final")
        rows = final.height
        del final
        snap, export = [], []
        for i in range(args.runs):
            export.append(export_once(dsn, root / f"export-{i}.parquet"))
            snap.append(snapshot_once(segments, root / f"snap-{i}.parquet"))
        rate, consume_rate = archiver_rate(root, args.archive_messages)
    finally:
        stop(pg)
    s, e = statistics.median(snap), statistics.median(export)
    print(f"table: {rows:,} rows after {args.events:,} change events over {args.keys:,} keys")
    print(f"snapshot (materialise + Parquet + digest): median {s:.2f} s "
          f"= {args.events / s:,.0f} events/s; runs {[round(x, 2) for x in snap]}")
    print(f"Postgres COPY -> Arrow -> Parquet export:  median {e:.2f} s; "
          f"runs {[round(x, 2) for x in export]}")
    print(f"snapshot / export = {s / e:.2f}x (target <= 2x)")
    print(f"archiver (broker -> typed Parquet segments): {rate:,.0f} events/s "
          f"({args.archive_messages:,} real Debezium envelopes, ~9.8 KB each)")
    print(f"  broker consume alone, same messages (ceiling): {consume_rate:,.0f} msg/s")


if __name__ == "__main__":
    main()
