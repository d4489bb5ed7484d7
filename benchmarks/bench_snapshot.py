"""Issue 3 benchmark, side by side in one process:

* snapshot of a 1M-row table from 3M archived change events (materialise -> Parquet ->
  digest, i.e. what `tidelog snapshot create` does after the archive) versus exporting the
  same final table straight from Postgres (`COPY ... TO STDOUT` -> Arrow -> Parquet);
* the archiver: Debezium envelopes on the broker -> typed Parquet segments, events/s.

It starts a private Postgres and a Tansu broker in a temporary directory.

    .venv/bin/python benchmarks/bench_snapshot.py [--keys 1000000] [--events 3000000]
    .venv/bin/python benchmarks/bench_snapshot.py --archive-only [--archive-messages 100000]
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
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

from snapshotter.archive import Archive  # noqa: E402
from snapshotter.archiving import archive_topics  # noqa: E402
from snapshotter.full_build import DEFAULT_MEMORY_MB, write_full  # noqa: E402
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
    """The snapshotter's own full build of one table: materialise (in key-hash buckets
    when the default memory budget asks for them), Parquet, digest, file checksums."""
    out.mkdir(parents=True)
    t = time.perf_counter()
    write_full(duckdb.connect(), "public.bench", "bench.public.bench", out,
                [pl.scan_parquet(s) for s in segments], None, DEFAULT_MEMORY_MB << 20)
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


def archiver_rates(root: Path, messages: int, runs: int, codecs: list[str]
                   ) -> dict[str, tuple[list[float], list[float], list[float]]]:
    """Produce real Debezium envelopes (recorded fixture, varying ids), archive them.

    One topic per producer compression codec (the connector template sets lz4, as Connect
    would send it); per run and codec, the broker's consume alone (`read_range`, the
    ceiling), `archive_topics` into a fresh archive, and the same without computing row
    hashes (snapshotter/row_hashes.py, the A/B of that cost), side by side.
    Returns codec -> (archive events/s, consume msg/s, archive without row hashes
    events/s), per run.
    """
    from unittest import mock

    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    import snapshotter.archiving
    from cdc.reader import read_range

    broker, bootstrap = start_broker(root / "broker", free_port())
    try:
        settings = Settings(home=root, bootstrap_servers=bootstrap, topic_prefix="bench",
                            archive_root=str(root / "archive"))
        admin = AdminClient({"bootstrap.servers": bootstrap})
        fixture = Path(__file__).resolve().parents[1] / "tests/fixtures/recorded"
        msg = json.loads((fixture / "rec_public_t1_002_c.json").read_text())
        head, tail = msg["value"].split('"after":{"id":2', 1)
        key_head, key_tail = msg["key"].rsplit('"payload":{"id":2}', 1)
        # A small warm-up topic, archived once and not counted: the first archive in a
        # process builds the column codecs and loads Parquet (a long-running archiver
        # pays that once).
        for codec, topic, count in [(codecs[0], "bench.public.warmup", 2_000)] + [
                (c, f"bench.public.t1_{c}", messages) for c in codecs]:
            for f in admin.create_topics([NewTopic(topic, 1, 1)]).values():
                f.result(30)
            producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20,
                                 "compression.type": codec})
            for i in range(count):
                value = f'{head}"after":{{"id":{i}{tail}'.encode()
                while True:
                    try:
                        producer.produce(
                            topic, value,
                            key=f'{key_head}"payload":{{"id":{i}}}{key_tail}'.encode())
                        break
                    except BufferError:
                        producer.poll(0.01)
            producer.flush()
        archive_topics(settings, ["bench.public.warmup"],
                       archive=Archive(str(root / "archive-warmup")))
        result: dict[str, tuple[list[float], list[float], list[float]]] = {
            c: ([], [], []) for c in codecs}
        for run in range(runs):
            for codec in codecs:
                topic = f"bench.public.t1_{codec}"
                t = time.perf_counter()
                consumed = sum(len(b) for b in read_range(settings, {(topic, 0): 0}))
                result[codec][1].append(consumed / (time.perf_counter() - t))
                t = time.perf_counter()
                marks = archive_topics(settings, [topic],
                                       archive=Archive(str(root / f"archive-{codec}-{run}")))
                result[codec][0].append(messages / (time.perf_counter() - t))
                assert consumed == messages and marks[(topic, 0)] == messages, marks
                with mock.patch.object(snapshotter.archiving, "with_row_hashes",
                                       lambda table: table):
                    t = time.perf_counter()
                    archive_topics(settings, [topic], archive=Archive(
                        str(root / f"archive-{codec}-{run}-unhashed")))
                    result[codec][2].append(messages / (time.perf_counter() - t))
        return result
    finally:
        stop(broker)


def print_archiver(rates: dict[str, tuple[list[float], list[float], list[float]]],
                   messages: int) -> None:
    for codec, (archive, consume, unhashed) in rates.items():
        a, c = statistics.median(archive), statistics.median(consume)
        u = statistics.median(unhashed)
        print(f"archiver, {codec} batches (broker -> typed Parquet segments): median "
              f"{a:,.0f} events/s; runs {[round(x) for x in archive]}")
        print(f"  broker consume alone, same messages (ceiling): median {c:,.0f} msg/s; "
              f"runs {[round(x) for x in consume]}; archiver/consume {a / c:.2f}")
        print(f"  archiver without row hashes (A/B): median {u:,.0f} events/s; runs "
              f"{[round(x) for x in unhashed]}; with/without {a / u:.2f}")
    print(f"  ({messages:,} real Debezium envelopes, ~9.8 KB each, per run)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=3_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--archive-messages", type=int, default=200_000)
    parser.add_argument("--archive-runs", type=int, default=3)
    parser.add_argument("--compression", default="lz4,none",
                        help="producer codecs to compare for the archiver (lz4 is what the "
                             "connector template sets)")
    parser.add_argument("--archive-only", action="store_true",
                        help="run only the archiver part (no Postgres, no snapshot)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="tidelog-bench-snap-"))
    root.chmod(0o755)
    try:
        run(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(args: argparse.Namespace, root: Path) -> None:
    codecs = [c.strip() for c in args.compression.split(",") if c.strip()]
    if args.archive_only:
        print_archiver(archiver_rates(root, args.archive_messages, args.archive_runs, codecs),
                       args.archive_messages)
        return
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
            snap.append(snapshot_once(segments, root / f"snap-{i}"))
        rates = archiver_rates(root, args.archive_messages, args.archive_runs, codecs)
    finally:
        stop(pg)
    s, e = statistics.median(snap), statistics.median(export)
    print(f"table: {rows:,} rows after {args.events:,} change events over {args.keys:,} keys")
    print("snapshot (snapshotter full build: materialise, Parquet, digest, sha256): "
          f"median {s:.2f} s "
          f"= {args.events / s:,.0f} events/s; runs {[round(x, 2) for x in snap]}")
    print(f"Postgres COPY -> Arrow -> Parquet export:  median {e:.2f} s; "
          f"runs {[round(x, 2) for x in export]}")
    print(f"snapshot / export = {s / e:.2f}x (target <= 2x)")
    print_archiver(rates, args.archive_messages)


if __name__ == "__main__":
    main()
