"""Peak memory of materialising a large table, folded segment group by group.

    .venv/bin/python benchmarks/bench_memory.py --keys 10000000 --events 12000000

Generates archive-layout segments (bench_materialise.generate), then in a fresh process
runs the snapshotter's fold (`snapshotter.snapshots._fold`) to Parquet and reports the
peak RSS next to the size of the resulting state.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def child(directory: Path) -> None:
    import polars as pl

    from snapshotter.snapshots import _fold

    segments = sorted(str(p) for p in directory.glob("segment-0*.parquet"))
    t = time.perf_counter()
    state = _fold([pl.scan_parquet(s) for s in segments], None)
    state.write_parquet(directory / "state.parquet")
    elapsed = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"rows {state.height:,}; state in memory {state.estimated_size('mb'):,.0f} MB; "
          f"peak RSS {peak:,.0f} MB; {elapsed:.1f} s; segments {len(segments)}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=10_000_000)
    parser.add_argument("--events", type=int, default=12_000_000)
    parser.add_argument("--child", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    from bench_materialise import generate

    directory = Path(tempfile.mkdtemp(prefix="tidelog-bench-mem-"))
    generate(directory, args.keys, args.events)
    subprocess.run([sys.executable, __file__, "--child", str(directory)], check=True)
    subprocess.run(["rm", "-rf", str(directory)], check=True)


if __name__ == "__main__":
    main()
