"""Incremental snapshot after 1% of rows changed vs a full build, through `create_snapshot`.

    .venv/bin/python benchmarks/bench_incremental.py [--keys 1000000] [--events 3000000]
                                                     [--runs 5]

Writes the archive of bench_materialise's events (1M `r`, then `u`/`c`/`d`/tombstones,
then a segment touching 1% of the keys) into a real archive directory, builds a snapshot
at the cut before the 1% segment, then times, alternating in one process, what
`tidelog snapshot create` does for the cut after it:

* full: materialise every event, write Parquet, digest, manifest, catalog;
* incremental: from the earlier snapshot (shared data files + delete/delta files and a
  derived digest), same manifest and catalog work.

Both must give the same digest. Target: incremental <= 10% of full.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_materialise import generate  # noqa: E402

from cdc.columns import with_salts  # noqa: E402
from cdc.reader import LogIdentity  # noqa: E402
from snapshotter.archive import Archive  # noqa: E402
from snapshotter.cut import Cut, PartitionCut  # noqa: E402
from snapshotter.row_hashes import with_row_hashes  # noqa: E402
from snapshotter.snapshots import create_snapshot  # noqa: E402
from tidelog.settings import Settings  # noqa: E402

TABLE = "public.items"
IDENTITY = LogIdentity("bench-cluster", "bench-topic")


def build_archive(directory: Path, keys: int, events: int, salted: bool = False
                  ) -> tuple[Settings, Cut, Cut, int]:
    raw = directory / "raw"
    raw.mkdir()
    layout = generate(raw, keys, events)
    settings = Settings(home=directory / "home", topic_prefix="bench",
                        archive_root=str(directory / "archive"),
                        snapshot_root=str(directory / "snapshots"))
    archive = Archive(settings.archive_root)
    topic = f"{settings.topic_prefix}.{TABLE}"
    gen = archive.open_generation(topic, 0, IDENTITY).number
    ends = []
    for path in [*layout["segments"], layout["delta"]]:
        frame = pl.read_parquet(path)
        start, end = int(frame["__offset"].min()), int(frame["__offset"].max()) + 1
        table = pq.read_table(path)
        # --salted: salts, then row hashes, as the archiver writes segments now
        archive.write_segment(topic, 0, gen, start, end,
                              with_row_hashes(with_salts(table)) if salted else table)
        ends.append(end)

    def cut(end: int) -> Cut:
        return Cut((PartitionCut(topic, 0, end, 0, IDENTITY.cluster_id, IDENTITY.topic_id),),
                   lsn=end * 16)

    shutil.rmtree(raw)
    return settings, cut(ends[-2]), cut(ends[-1]), int(layout["delta_events"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=3_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--salted", action="store_true",
                        help="salt and hash each segment's rows, as the archiver does "
                             "(docs/digest.md)")
    args = parser.parse_args()

    directory = Path(tempfile.mkdtemp(prefix="tidelog-bench-inc-"))
    try:
        settings, before, after, delta_events = build_archive(directory, args.keys,
                                                              args.events, args.salted)
        base = create_snapshot(settings, [TABLE], before, catch_up=False, incremental=False)
        print(f"archive: {args.events:,} events over {args.keys:,} keys, then "
              f"{delta_events:,} events on 1% of the keys; base snapshot {base.id}, "
              f"{base.tables[TABLE].rows:,} rows")
        full_times, inc_times = [], []
        digests = set()
        for run in range(args.runs + 1):  # run 0 warms both paths up and is not counted
            full_settings = dataclasses.replace(
                settings, snapshot_root=str(directory / f"full-{run}"),
                home=directory / f"home-full-{run}")
            t = time.perf_counter()
            full = create_snapshot(full_settings, [TABLE], after, catch_up=False,
                                   incremental=False)
            full_s = time.perf_counter() - t
            shutil.rmtree(directory / f"full-{run}")

            target = Path(settings.snapshot_root) / full.id
            shutil.rmtree(target, ignore_errors=True)
            t = time.perf_counter()
            inc = create_snapshot(settings, [TABLE], after, catch_up=False)
            inc_s = time.perf_counter() - t
            assert inc.built_from == base.id, inc.built_from
            assert inc.tables[TABLE].delete_files, "incremental build was not layered"
            digests.update({full.digest, inc.digest})
            if run:
                full_times.append(full_s)
                inc_times.append(inc_s)
            print(f"run {run}{' (warm-up)' if not run else ''}: full {full_s:.3f} s, "
                  f"incremental {inc_s:.3f} s ({inc_s / full_s:.1%})")
        if len(digests) != 1:
            raise SystemExit(f"incremental and full builds differ: {digests}")
        full_m, inc_m = statistics.median(full_times), statistics.median(inc_times)
        ratios = sorted(i / f for i, f in zip(inc_times, full_times, strict=True))
        print(f"median full {full_m:.3f} s ({args.events + delta_events:,} events, "
              f"{args.events / full_m / 1e6:.2f} M events/s); median incremental "
              f"{inc_m:.3f} s; ratio of medians {inc_m / full_m:.1%}; per-run ratios "
              f"{', '.join(f'{r:.1%}' for r in ratios)}; same digest {digests.pop()[:16]}")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
