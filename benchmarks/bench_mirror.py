"""What an S3 snapshot root adds to `snapshot create`, side by side with a local root.

    .venv/bin/python benchmarks/bench_mirror.py [--keys 200000] [--events 600000]
                                                [--runs 5]

Writes bench_incremental's archive (salted, as the archiver writes it), starts moto's S3
server on loopback, and builds a base snapshot in two working copies: one with a local
root, one with `TIDELOG_SNAPSHOT_ROOT=s3://…` (snapshotter/mirror.py). Then, alternating
in one process, it times a full and an incremental `create_snapshot` of the next cut in
each; with the S3 root that includes uploading the new files and manifest. The created
snapshot is deleted between runs (not timed). Both roots must give the same digest.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.fs as pafs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_incremental import TABLE, build_archive  # noqa: E402

from api.retention import delete_snapshot_files  # noqa: E402
from snapshotter.snapshots import create_snapshot  # noqa: E402
from tidelog.settings import Settings  # noqa: E402
from tidelog.stack.process import free_port  # noqa: E402


def _moto(port: int) -> subprocess.Popen[bytes]:
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H",
                               "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    s3 = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http",
                           region="us-east-1", allow_bucket_creation=True,
                           access_key="bench", secret_key="bench")
    deadline = time.monotonic() + 30
    while True:
        try:
            s3.create_dir("bench-snapshots")
            return server
        except OSError:
            if time.monotonic() > deadline:
                server.terminate()
                raise
            time.sleep(0.3)


def main() -> None:
    import os

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=200_000)
    parser.add_argument("--events", type=int, default=600_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    directory = Path(tempfile.mkdtemp(prefix="tidelog-bench-mirror-"))
    port = free_port()
    server = _moto(port)
    try:
        settings, before, after, _ = build_archive(directory, args.keys, args.events,
                                                   salted=True)
        roots: dict[str, Settings] = {
            "local": dataclasses.replace(settings, snapshot_root=str(directory / "local"),
                                         home=directory / "home-local"),
            "s3": dataclasses.replace(
                settings, snapshot_root=str(directory / "working-copy"),
                home=directory / "home-s3",
                snapshot_remote=(f"s3://bench-snapshots/snaps?endpoint_override="
                                 f"127.0.0.1:{port}&scheme=http&region=us-east-1"))}
        for each in roots.values():
            create_snapshot(each, [TABLE], before, catch_up=False, incremental=False)
        times: dict[tuple[str, str], list[float]] = {}
        digests = set()
        for run in range(args.runs + 1):  # run 0 warms up and is not counted
            for kind in ("full", "incremental"):
                for label, each in (roots.items() if run % 2 else reversed(roots.items())):
                    began = time.perf_counter()
                    made = create_snapshot(each, [TABLE], after, catch_up=False,
                                           incremental=kind == "incremental")
                    elapsed = time.perf_counter() - began
                    assert (made.built_from != "full") == (kind == "incremental")
                    digests.add(made.digest)
                    delete_snapshot_files(each, made.id)
                    if run:
                        times.setdefault((kind, label), []).append(elapsed)
        if len(digests) != 1:
            raise SystemExit(f"the roots' snapshots differ: {digests}")
        print(f"{args.events:,} events over {args.keys:,} keys, then 1% changed; "
              f"medians of {args.runs} alternating runs")
        for kind in ("full", "incremental"):
            local = statistics.median(times[(kind, "local")])
            s3 = statistics.median(times[(kind, "s3")])
            print(f"{kind:12s} local root {local:.3f} s, S3 root {s3:.3f} s "
                  f"(+{s3 - local:.3f} s, {s3 / local:.2f}x)")
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
