"""What listing snapshots costs as they accumulate: `SnapshotStore.manifests()` at N
snapshots (each a copy of one real manifest under another id). `snapshot create` lists
them three times (the catalog check, the base search, the catalog update), so this says
whether caching parsed manifests would be worth its risk.

    .venv/bin/python benchmarks/bench_store.py --snapshots 300 --runs 5
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from snapshotter.snapshots import create_snapshot  # noqa: E402
from snapshotter.store import SnapshotStore  # noqa: E402
from tests.unit.test_snapshot_layout import History, _settings  # noqa: E402

TABLE = "public.items"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--snapshots", type=int, default=300)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="tidelog-bench-store-"))
    try:
        settings = _settings(root)
        history = History(settings, TABLE).seed(50)
        made = create_snapshot(settings, [TABLE], history.cut(), catch_up=False)
        store = SnapshotStore.of(settings)
        text = (store.path(made.id) / "manifest.json").read_text()
        for n in range(args.snapshots - 1):  # copies under other ids: only listing is timed
            sid = f"{n:016x}"
            (store.root / sid).mkdir()
            (store.root / sid / "manifest.json").write_text(
                json.dumps({**json.loads(text), "id": sid}))
        took = []
        for _ in range(args.runs):
            began = time.perf_counter()
            assert len(store.manifests()) == args.snapshots
            took.append(time.perf_counter() - began)
        median = statistics.median(took)
        print(json.dumps({"snapshots": args.snapshots, "runs": args.runs,
                          "manifest_bytes": len(text), "listing_median_s": round(median, 4),
                          "per_snapshot_ms": round(1000 * median / args.snapshots, 3)}))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
