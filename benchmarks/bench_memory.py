"""Peak memory of a full snapshot build of a large table, in key-hash buckets.

    .venv/bin/python benchmarks/bench_memory.py --keys 10000000 --events 12000000 \
        [--memory-mb 100000 4096 2048 1536]

Generates archive-layout segments (bench_materialise.generate), then, for each
`--memory-mb` budget (`TIDELOG_SNAPSHOT_MEMORY_MB`), in a fresh process, runs the
snapshotter's full build (`snapshotter.full_build.write_full`: as many key-hash buckets as
the budget asks for, the events spilled once sorted by bucket, each bucket folded in
groups of FOLD_EVENTS and written before the next; then the DuckDB digest) and reports its
peak RSS next to the size of the whole state. A budget large enough gives one bucket: the
whole state in memory at once.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def child(directory: Path, memory_mb: int) -> None:
    import duckdb
    import polars as pl

    from snapshotter import full_build

    segments = sorted(str(p) for p in directory.glob("segment-0*.parquet"))
    out = Path(tempfile.mkdtemp(prefix="out-", dir=directory))
    t = time.perf_counter()
    table = full_build.write_full(duckdb.connect(), "public.big", "bench.public.big", out,
                                  [pl.scan_parquet(s) for s in segments], None,
                                  memory_mb << 20)
    elapsed = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # measured after the peak was taken: one bucket at a time
    state_mb = sum(pl.read_parquet(str(out / f)).estimated_size("mb") for f in table.files)
    on_disk = sum((out / f).stat().st_size for f in table.files) / 2**20
    print(f"memory budget {memory_mb:,} MiB: {len(table.files)} bucket(s); rows {table.rows:,}; "
          f"state in memory ~{state_mb:,.0f} MB ({on_disk:,.0f} MB Parquet); "
          f"peak RSS {peak:,.0f} MB; {elapsed:.1f} s", flush=True)
    shutil.rmtree(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=10_000_000)
    parser.add_argument("--events", type=int, default=12_000_000)
    parser.add_argument("--memory-mb", type=int, nargs="+",
                        default=[100_000, 4096, 2048, 1536])
    parser.add_argument("--child", type=Path)
    parser.add_argument("--generate", type=Path)
    args = parser.parse_args()
    if args.generate:
        from bench_materialise import generate

        generate(args.generate, args.keys, args.events)
        return
    if args.child:
        child(args.child, args.memory_mb[0])
        return
    directory = Path(tempfile.mkdtemp(prefix="tidelog-bench-mem-"))
    try:
        # Every step in its own process: ru_maxrss survives fork and exec on Linux, so a
        # parent that held the generated events would inflate each child's peak.
        subprocess.run([sys.executable, __file__, "--generate", str(directory),
                        "--keys", str(args.keys), "--events", str(args.events)], check=True)
        for megabytes in args.memory_mb:
            subprocess.run([sys.executable, __file__, "--child", str(directory),
                            "--memory-mb", str(megabytes)], check=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
