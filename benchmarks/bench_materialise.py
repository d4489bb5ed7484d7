"""Benchmark: materialise 3M change events over 1M keys, digest it, rebuild incrementally.

    .venv/bin/python benchmarks/bench_materialise.py [--keys 1000000] [--events 3000000]

Generates archive-layout Parquet segments in a temp dir, then times (median of
`--runs`), each run in a fresh process so its peak RSS (ru_maxrss) is its own:

* full build: segments -> table state -> Parquet, in-memory and streaming engines;
* the digest of the snapshot (DuckDB);
* an incremental build (previous snapshot + 1% of rows changed) vs the full build of
  the same archive, and checks both give the same digest.

Targets: >= 1M events/s on the 2-core project machine; incremental <= 10% of full.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from snapshotter.digest import table_digest  # noqa: E402
from snapshotter.materialise import plan_materialise  # noqa: E402

__all__ = ["generate", "main"]

# The parent only spawns children: ru_maxrss survives fork and exec on Linux, so a parent
# holding the generated data would inflate every child's peak. Generation is a child too.

SEGMENT_EVENTS = 500_000
KEY_COLUMNS = ["id"]


def _events(rng: np.random.Generator, ids: np.ndarray, ops: np.ndarray, start: int) -> pl.DataFrame:
    """Archive-layout events with 8 typed columns; data is null for d/x."""
    n = len(ids)
    offsets = np.arange(start, start + n, dtype=np.int64)
    frame = pl.DataFrame(
        {
            "__partition": np.zeros(n, dtype=np.int32),
            "__offset": offsets,
            "__op": ops,
            "id": ids.astype(np.int64),
            "name": rng.integers(0, 50_000, n),
            "amount": rng.integers(0, 10_000_000, n),
            "qty": rng.integers(0, 1000, n).astype(np.int32),
            "price": rng.random(n) * 1000,
            "active": rng.random(n) < 0.5,
            "updated_at": 1_700_000_000_000_000 + offsets * 1_000,
            "created": rng.integers(18_000, 20_000, n).astype(np.int32),
            "note": rng.integers(0, 10, n),
        }
    )
    upsert = pl.col("__op").is_in(["r", "c", "u"])
    data = {
        "id": pl.col("id"),
        "name": pl.format("customer-{}", pl.col("name")),
        "amount": pl.format(
            "{}.{}", pl.col("amount") // 100, (pl.col("amount") % 100).cast(pl.String).str.zfill(2)
        ).cast(pl.Decimal(12, 2)),
        "qty": pl.col("qty"),
        "price": pl.col("price"),
        "active": pl.col("active"),
        "updated_at": pl.col("updated_at").cast(pl.Datetime("us", "UTC")),
        "created": pl.col("created").cast(pl.Date),
        "note": pl.when(pl.col("note") == 0).then(None).otherwise(pl.format("n{}", "note")),
    }
    return frame.select(
        pl.col("__partition"),
        pl.col("__offset"),
        pl.col("__op"),
        pl.concat_str(pl.lit('{"id":'), pl.col("id"), pl.lit("}")).alias("__key"),
        (pl.col("__offset") * 16).alias("__lsn"),
        (pl.col("__offset") // 4).alias("__txid"),
        pl.lit(None, pl.String).alias("__tx"),
        (pl.col("__offset") + 1_700_000_000_000).alias("__ts_ms"),
        pl.lit(None, pl.String).alias("__before"),
        *(pl.when(upsert).then(expr).otherwise(None).alias(n) for n, expr in data.items()),
    )


def _ops(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.choice(np.array(["u", "c", "d", "x"]), n, p=[0.8, 0.06, 0.07, 0.07])


def generate(directory: Path, keys: int, events: int, seed: int = 7) -> dict[str, Any]:
    """Write the archive segments and a 1%-of-rows change segment; return the layout."""
    rng = np.random.default_rng(seed)
    initial = _events(rng, np.arange(keys), np.full(keys, "r"), 0)
    changes = events - keys
    later = _events(rng, rng.integers(0, keys, changes), _ops(rng, changes), keys)
    all_events = pl.concat([initial, later])
    segments = []
    for i, start in enumerate(range(0, events, SEGMENT_EVENTS)):
        path = directory / f"segment-{i:04d}.parquet"
        all_events.slice(start, SEGMENT_EVENTS).write_parquet(path, compression="zstd")
        segments.append(str(path))
    delta_n = keys // 100
    delta = _events(rng, rng.integers(0, keys, delta_n), _ops(rng, delta_n), events)
    delta_path = directory / "segment-delta.parquet"
    delta.write_parquet(delta_path, compression="zstd")
    return {"segments": segments, "delta": str(delta_path), "delta_events": delta_n}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_seconds() -> float:
    """User + system CPU so far: less sensitive than wall time to a busy shared machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _child(args: argparse.Namespace) -> dict[str, Any]:
    if args.child == "generate":
        t_gen = time.perf_counter()
        layout = generate(Path(args.dir), args.keys, args.events)
        Path(args.dir, "layout.json").write_text(json.dumps(layout))
        return {**layout, "seconds": time.perf_counter() - t_gen}
    if args.child == "compare":
        a, b = (_digest(Path(p)) for p in (args.out, args.base))
        return {"same": a == b, "digest": a}
    layout = json.loads(Path(args.dir, "layout.json").read_text())
    baseline = _rss_mb()  # interpreter + polars + duckdb, before any data
    cpu0 = _cpu_seconds()
    engine = args.engine
    t0 = time.perf_counter()
    if args.child == "full":
        scans = [pl.scan_parquet(p) for p in layout["segments"]]
        plan = plan_materialise(scans, KEY_COLUMNS, keep_key=True)
    elif args.child == "full+delta":
        scans = [pl.scan_parquet(p) for p in [*layout["segments"], layout["delta"]]]
        plan = plan_materialise(scans, KEY_COLUMNS, keep_key=True)
    elif args.child == "fold":
        # Bounded memory: one segment at a time on top of the state so far.
        state: pl.DataFrame | None = None
        for path in layout["segments"]:
            state = plan_materialise(
                [pl.scan_parquet(path)], KEY_COLUMNS, base=state, keep_key=True
            ).collect()
        assert state is not None
        plan = state.lazy()
    elif args.child == "incremental":
        base = pl.scan_parquet(args.base)
        plan = plan_materialise(
            [pl.scan_parquet(layout["delta"])], KEY_COLUMNS, base=base, keep_key=True
        )
    elif args.child == "digest":
        import duckdb

        con = duckdb.connect()
        got = table_digest(con, f"SELECT * EXCLUDE (__key) FROM read_parquet('{args.base}')")
        return {
            "seconds": time.perf_counter() - t0,
            "cpu_seconds": _cpu_seconds() - cpu0,
            "rss_mb": _rss_mb(),
            "baseline_mb": baseline,
            "rows": got.rows,
        }
    else:
        raise SystemExit(f"unknown phase {args.child}")
    t_plan = time.perf_counter() - t0
    out = Path(args.out)
    if args.sink:
        plan.sink_parquet(out, compression="zstd", engine=engine)
        t_collect = time.perf_counter() - t0
    else:
        state = plan.collect(engine=engine)
        t_collect = time.perf_counter() - t0
        state.write_parquet(out, compression="zstd")
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "cpu_seconds": _cpu_seconds() - cpu0,
        "plan_seconds": t_plan,
        "compute_seconds": t_collect,
        "rss_mb": _rss_mb(),
        "baseline_mb": baseline,
    }


def _once(phase: str, directory: Path, **opts: Any) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", phase, "--dir", str(directory)]
    for name, value in opts.items():
        if value is True:
            cmd.append(f"--{name}")
        elif value not in (None, False):
            cmd += [f"--{name}", str(value)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _run(phase: str, directory: Path, runs: int, **opts: Any) -> dict[str, Any]:
    results = [_once(phase, directory, **opts) for _ in range(runs)]
    summary = {k: statistics.median(r[k] for r in results) for k in results[0]}
    summary["rss_mb"] = max(r["rss_mb"] for r in results)
    summary["all_seconds"] = [round(r["seconds"], 2) for r in results]
    return summary


def _digest(path: Path) -> str:
    import duckdb

    return table_digest(duckdb.connect(), f"read_parquet('{path}')").digest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=3_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child")
    parser.add_argument("--dir")
    parser.add_argument("--out")
    parser.add_argument("--base")
    parser.add_argument("--engine", default="auto")
    parser.add_argument("--sink", action="store_true")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args)))
        return

    with tempfile.TemporaryDirectory(prefix="tidelog-bench-") as tmp:
        directory = Path(tmp)
        layout = _once("generate", directory, keys=args.keys, events=args.events)
        print(f"generated {args.events:,} events over {args.keys:,} keys in "
              f"{len(layout['segments'])} segments ({layout['seconds']:.1f} s); "
              f"delta {layout['delta_events']:,} events; median of {args.runs} runs, "
              "each in a fresh process")
        snap = directory / "snapshot.parquet"
        full_results = {}
        for label, engine, sink in [
            ("in-memory collect + write_parquet", "in-memory", False),
            ("streaming collect + write_parquet", "streaming", False),
            ("streaming sink_parquet", "streaming", True),
        ]:
            r = _run("full", directory, args.runs, out=snap, engine=engine, sink=sink)
            full_results[label] = r
            print(f"full build [{label}]: {r['seconds']:.2f} s {r['all_seconds']} "
                  f"(pre-pass {r['plan_seconds']:.2f} s, to state {r['compute_seconds']:.2f} s) "
                  f"= {args.events / r['seconds'] / 1e6:.2f} M events/s, "
                  f"CPU {r['cpu_seconds']:.2f} s, "
                  f"peak RSS {r['rss_mb']:.0f} MB (imports alone {r['baseline_mb']:.0f} MB)")
        r = _run("fold", directory, args.runs, out=directory / "fold.parquet")
        print(f"full build [segment by segment, in-memory]: {r['seconds']:.2f} s "
              f"{r['all_seconds']} = {args.events / r['seconds'] / 1e6:.2f} M events/s, "
              f"CPU {r['cpu_seconds']:.2f} s, peak RSS {r['rss_mb']:.0f} MB")
        d = _run("digest", directory, args.runs, base=snap)
        print(f"digest of the {d['rows']:,}-row snapshot: {d['seconds']:.2f} s "
              f"{d['all_seconds']}, CPU {d['cpu_seconds']:.2f} s, peak RSS {d['rss_mb']:.0f} MB")

        best = min(full_results.items(), key=lambda kv: kv[1]["seconds"])
        engine = "streaming" if "streaming" in best[0] else "in-memory"
        sink = "sink" in best[0]
        full_out = directory / "full-delta.parquet"
        inc_out = directory / "incremental.parquet"
        f = _run("full+delta", directory, args.runs, out=full_out, engine=engine, sink=sink)
        i = _run("incremental", directory, args.runs, out=inc_out, base=snap, engine=engine,
                 sink=sink)
        same = _once("compare", directory, out=full_out, base=inc_out)["same"]
        print(f"after 1% of rows changed [{best[0]}]: full {f['seconds']:.2f} s, "
              f"incremental {i['seconds']:.2f} s {i['all_seconds']} "
              f"(to state {i['compute_seconds']:.2f} s) "
              f"= {i['seconds'] / f['seconds']:.0%} of full "
              f"(state only: {i['compute_seconds'] / f['compute_seconds']:.0%}; CPU "
              f"{i['cpu_seconds']:.2f} s vs {f['cpu_seconds']:.2f} s); "
              f"peak RSS full {f['rss_mb']:.0f} MB, incremental {i['rss_mb']:.0f} MB; "
              f"same digest: {same}")
        if not same:
            raise SystemExit("incremental build differs from the full build")


if __name__ == "__main__":
    main()
