"""TPC-H through the real stack: snapshots vs DuckDB's own Parquet export, side by side.

    .venv/bin/python benchmarks/bench_tpch.py [--home DIR] [--sf 0.1] [--rounds 3]
                                              [--single public.lineitem] [--profile DIR]
                                              [--json]

Sets up (not timed): TPC-H at scale factor `--sf` from DuckDB's tpch extension
(`CALL dbgen`), copied into Postgres through DuckDB's postgres extension (binary COPY),
primary keys added, all 8 tables captured by Debezium under a fresh topic prefix and
archived. Then, in one process, per round:

1. a refresh round of TPC-H's refresh functions: RF1 inserts 0.1% new orders with their
   line items, RF2 deletes 0.1% of the existing orders with theirs, plus updates of 0.1%
   of customers and parts (one transaction each), captured and archived (not timed);
2. timed, side by side at the same cut: an incremental snapshot of all 8 tables (from the
   previous round's snapshot), a full snapshot of all 8 (`--full`: rebuilt from the archive
   alone, replacing it; both must give the same digest), DuckDB's export of the same 8
   tables from Postgres (`COPY (SELECT * FROM pg.<schema>.<table>) TO '<t>.parquet'`), and
   the same three for the single table `--single`.

Each snapshot is `create_snapshot` at the captured cut (no catch-up from Kafka: that
is archiving, timed in BENCHMARKS.md's archiver section): materialise or layer, Parquet,
digest, per-file sha256, fsync, manifest, catalog registration, `dataset.ready`.
Without --home it starts its own stack in a temporary TIDELOG_HOME and stops it at the end.
`--profile DIR` writes a cProfile of the first round's full and incremental builds there.
Targets (issue 13): full <= 1.0x the export; incremental <= 10% of full.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import json
import logging
import os
import shutil
import statistics
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

TABLES = ("customer", "lineitem", "nation", "orders", "part", "partsupp", "region",
          "supplier")
KEYS = {"customer": "c_custkey", "lineitem": "l_orderkey, l_linenumber",
        "nation": "n_nationkey", "orders": "o_orderkey", "part": "p_partkey",
        "partsupp": "ps_partkey, ps_suppkey", "region": "r_regionkey",
        "supplier": "s_suppkey"}


def _duckdb_pg(dsn: str) -> Any:
    import duckdb

    from tidelog.duckdb_extensions import load_extension

    con = duckdb.connect()
    load_extension(con, "postgres")
    con.execute(f"ATTACH '{dsn}' AS pg (TYPE postgres)")
    return con


def load_tpch(dsn: str, schema: str, sf: float) -> dict[str, int]:
    """TPC-H at `sf` in Postgres schema `schema`, with primary keys; rows per table."""
    import duckdb
    import psycopg

    from tidelog.duckdb_extensions import load_extension

    gen = duckdb.connect()
    load_extension(gen, "tpch")
    gen.execute(f"CALL dbgen(sf={sf})")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"create schema {schema}")
    con = _duckdb_pg(dsn)
    counts = {}
    for table in TABLES:
        arrow = gen.execute(f"select * from {table}").fetch_arrow_table()  # noqa: F841
        con.execute(f"create table pg.{schema}.{table} as select * from arrow")
        counts[table] = arrow.num_rows
    con.close()
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in TABLES:
            conn.execute(f"alter table {schema}.{table} add primary key ({KEYS[table]})")
    return counts


def refresh_round(dsn: str, schema: str, number: int, orders: int) -> dict[str, int]:
    """RF1 + RF2 (+ updates), one transaction each; change events per table."""
    import psycopg

    events = dict.fromkeys(TABLES, 0)
    s = schema
    with psycopg.connect(dsn) as conn:
        top = conn.execute(f"select max(o_orderkey) from {s}.orders").fetchone()
        low = conn.execute(f"select min(o_orderkey) from {s}.orders").fetchone()
        assert top is not None and low is not None
        shift = int(top[0])
        # RF1: new orders (copies of the lowest ones, under new keys) and their line items
        source = f"select o_orderkey from {s}.orders order by o_orderkey limit {orders}"
        got = conn.execute(
            f"insert into {s}.orders select o_orderkey + {shift}, o_custkey, o_orderstatus, "
            f"o_totalprice, o_orderdate, o_orderpriority, o_clerk, o_shippriority, "
            f"o_comment from {s}.orders where o_orderkey in ({source})").rowcount
        events["orders"] += got
        got = conn.execute(
            f"insert into {s}.lineitem select l_orderkey + {shift}, l_partkey, l_suppkey, "
            f"l_linenumber, l_quantity, l_extendedprice, l_discount, l_tax, l_returnflag, "
            f"l_linestatus, l_shipdate, l_commitdate, l_receiptdate, l_shipinstruct, "
            f"l_shipmode, l_comment from {s}.lineitem where l_orderkey in ({source})"
        ).rowcount
        events["lineitem"] += got
        conn.commit()
        # RF2: delete the oldest orders and their line items (a delete + a tombstone each)
        gone = f"select o_orderkey from {s}.orders where o_orderkey < {int(low[0])} + " \
               f"{shift} order by o_orderkey limit {orders}"
        keys = [r[0] for r in conn.execute(gone).fetchall()]
        got = conn.execute(f"delete from {s}.lineitem where l_orderkey = any(%s)",
                           (keys,)).rowcount
        events["lineitem"] += 2 * got
        got = conn.execute(f"delete from {s}.orders where o_orderkey = any(%s)",
                           (keys,)).rowcount
        events["orders"] += 2 * got
        conn.commit()
        for table, key, column in (("customer", "c_custkey", "c_acctbal"),
                                   ("part", "p_partkey", "p_retailprice")):
            got = conn.execute(f"update {s}.{table} set {column} = {column} + 1 "
                               f"where {key} % 1000 = {number % 1000}").rowcount
            events[table] += got
        conn.commit()
    return events


def export(dsn: str, schema: str, tables: tuple[str, ...], directory: Path) -> float:
    """DuckDB's own export of `tables` from Postgres to Parquet; seconds (connect included)."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    began = time.perf_counter()
    con = _duckdb_pg(dsn)
    for table in tables:
        con.execute(f"COPY (SELECT * FROM pg.{schema}.{table}) TO "
                    f"'{directory / table}.parquet' (FORMAT parquet)")
    con.close()
    return time.perf_counter() - began


def _timed(call: Callable[[], Any], profile: Path | None = None) -> tuple[float, Any]:
    profiler = cProfile.Profile() if profile else None
    began = time.perf_counter()
    if profiler:
        profiler.enable()
    result = call()
    if profiler:
        profiler.disable()
    elapsed = time.perf_counter() - began
    if profiler and profile:
        profiler.dump_stats(str(profile))
    return elapsed, result


def _run(settings: Any, scratch: Path, args: argparse.Namespace,
         say: Callable[[str], None]) -> dict[str, Any]:
    from cdc.connector import ConnectorSpec, apply, delete
    from snapshotter.snapshots import create_snapshot, resolve_cut
    from tidelog.demo.capture import wait_for_capture

    stamp = f"{os.getpid() % 10000}x{int(time.time()) % 100000}"
    name = f"benchtpch{stamp}"
    schema = f"tpch_{stamp}"
    local = dataclasses.replace(settings, topic_prefix=name, connector_name=name)
    dsn = settings.require("postgres_dsn")
    tables = tuple(f"{schema}.{t}" for t in TABLES)
    single = (f"{schema}.{args.single}",)
    spec = ConnectorSpec(name, tables, name)
    try:
        began = time.perf_counter()
        counts = load_tpch(dsn, schema, args.sf)
        say(f"TPC-H sf={args.sf} in Postgres in {time.perf_counter() - began:.1f}s: "
            f"{sum(counts.values()):,} rows ({counts})")
        expected = {f"{schema}.{t}": n for t, n in counts.items()}
        began = time.perf_counter()
        apply(local, spec, timeout=600)
        cut = wait_for_capture(local, expected, timeout=1800, interval=5.0)
        say(f"captured and archived in {time.perf_counter() - began:.1f}s")
        # The first snapshots, which the first round's incremental builds start from.
        first = create_snapshot(local, tables, cut, catch_up=False)
        create_snapshot(local, single, cut, catch_up=False)
        say(f"base snapshot {first.id}: {sum(t.rows for t in first.tables.values()):,} rows")
        rows: list[dict[str, Any]] = []
        for number in range(1, args.rounds + 1):
            changed = refresh_round(dsn, schema, number, max(1, counts["orders"] // 1000))
            for t, n in changed.items():
                expected[f"{schema}.{t}"] += n
            cut = wait_for_capture(local, expected, timeout=600, interval=2.0)
            row: dict[str, Any] = {"round": number, "events": sum(changed.values())}
            profile = Path(args.profile) if args.profile and number == 1 else None
            if profile:
                profile.mkdir(parents=True, exist_ok=True)
            # What `snapshot create` adds before building: catch up from Kafka (nothing new
            # here), the capture check, and the transaction-aligned cut over all events.
            row["resolve_latest"], latest = _timed(
                lambda: resolve_cut(local, tables, "latest"),
                profile / "resolve-latest.prof" if profile else None)
            if latest.ends() != cut.ends():
                raise SystemExit(f"round {number}: 'latest' moved past the captured cut")
            for label, chosen in (("all", tables), ("single", single)):
                inc_s, inc = _timed(lambda c=chosen, at=cut: create_snapshot(
                                        local, c, at, catch_up=False),
                                    profile / f"{label}-incremental.prof" if profile else None)
                # Alternate which of the two full-table reads goes first.
                steps = [("full", lambda c=chosen, at=cut: create_snapshot(
                    local, c, at, catch_up=False, incremental=False)),
                    ("export", lambda c=chosen: export(
                        dsn, schema, tuple(x.split(".", 1)[1] for x in c),
                        scratch / "export"))]
                if number % 2 == 0:
                    steps.reverse()
                for step, call in steps:
                    prof = profile / f"{label}-{step}.prof" if profile else None
                    elapsed, result = _timed(call, prof)
                    if step == "full":
                        row[f"{label}_full"] = elapsed
                        if result.digest != inc.digest:
                            raise SystemExit(f"round {number} {label}: incremental digest "
                                             f"{inc.digest} != full {result.digest}")
                        if inc.built_from == "full":
                            raise SystemExit(f"round {number} {label}: not incremental")
                    else:
                        row[f"{label}_export"] = result
                row[f"{label}_incremental"] = inc_s
            say(f"round {number} ({row['events']} events): resolve 'latest' "
                f"{row['resolve_latest']:.2f}s; 8 tables full "
                f"{row['all_full']:.2f}s, export {row['all_export']:.2f}s, incremental "
                f"{row['all_incremental']:.2f}s | {args.single} full {row['single_full']:.2f}s,"
                f" export {row['single_export']:.2f}s, incremental "
                f"{row['single_incremental']:.2f}s")
            rows.append(row)
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0] if k != "round"}
        return {"sf": args.sf, "rows": sum(counts.values()), "rounds": rows, "median": med,
                "full_vs_export": med["all_full"] / med["all_export"],
                "incremental_vs_full": med["all_incremental"] / med["all_full"],
                "single_full_vs_export": med["single_full"] / med["single_export"],
                "single_incremental_vs_full": med["single_incremental"] / med["single_full"]}
    finally:
        delete(local, spec, drop_slot=True)
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"drop schema if exists {schema} cascade")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", help="use the stack of this TIDELOG_HOME (default: own)")
    parser.add_argument("--sf", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--single", default="lineitem", choices=TABLES)
    parser.add_argument("--profile", help="write cProfile stats of round 1 here")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    say = (lambda text: print(text, file=sys.stderr, flush=True)) if args.json else print

    from tidelog import stack
    from tidelog.settings import load_settings

    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    own = args.home is None
    home = Path(args.home or tempfile.mkdtemp(prefix="tltpch-home-")).absolute()
    if own:
        home.chmod(0o755)  # the postgres user must reach its data directory
    os.environ["TIDELOG_HOME"] = str(home)
    scratch = Path(tempfile.mkdtemp(prefix="tltpch-scratch-"))
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
    say(f"medians of {args.rounds} rounds: full / export {result['full_vs_export']:.2f}x, "
        f"incremental / full {result['incremental_vs_full']:.1%}; {args.single}: full / "
        f"export {result['single_full_vs_export']:.2f}x, incremental / full "
        f"{result['single_incremental_vs_full']:.1%}")
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
