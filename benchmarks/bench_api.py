"""Benchmark: REST API latency under load, from a second process on loopback.

    .venv/bin/python benchmarks/bench_api.py [--home DIR] [--rate 200] [--seconds 20]
                                             [--rows 10000] [--json]

Sets up (not timed) a table captured by Debezium, one snapshot and one training run
through the API (`tidelog api serve` in a subprocess), then a load generator in another
process sends an open-loop stream of requests — a new request every 1/rate seconds,
whether or not the previous ones have answered, so a slow answer cannot hide the ones
queued behind it — alternating between

* GET /snapshots/{id}                        (a snapshot's manifest), and
* GET /lineage/rows?table=T&key={"id": K}    (which snapshots and runs hold row K),

with K cycling over 100 keys, after one warm-up request per distinct path (the API keeps
lineage answers in memory until snapshots or MLflow change, see api/cache.py). Prints
p50/p99/max per endpoint. Then, against an API with that cache off
(TIDELOG_API_LINEAGE_TTL=0), the latency of single requests one at a time: the cost of a
cold lineage answer. Target: p99 < 50 ms at 200 requests/s on the 2-core project machine.

Without --home it starts its own stack in a temporary TIDELOG_HOME and stops it at the end.
`--load URL ...` is the load generator itself (the script runs it as a child process).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from trainer.recipe import RecipeResult, recipe  # noqa: E402

__all__ = ["balance_model", "main"]

TABLE = "public.bench_api_customers"
RECIPE = "benchmarks.bench_api:balance_model"
KEYS = 100


@recipe(tables=[TABLE])
def balance_model(tables: dict[str, pl.DataFrame], params: dict[str, Any], seed: int
                  ) -> RecipeResult:
    """Balance from id: the smallest model that makes a real MLflow run."""
    from sklearn.linear_model import LinearRegression  # type: ignore[import-untyped]

    frame = tables[TABLE]
    x = frame.select(pl.col("id").cast(pl.Float64)).to_pandas()
    model = LinearRegression().fit(x, frame["balance"].cast(pl.Float64).to_numpy())
    return RecipeResult(model=model, metrics={"rows": float(len(x))}, features=x)


# -- the load generator (child process) -------------------------------------------------

def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def _load(url: str, token: str, paths: list[str], rate: float, seconds: float,
                sequential: bool = False) -> dict[str, Any]:
    import httpx

    latencies: dict[str, list[float]] = {}
    errors: dict[str, int] = {}
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30,
                                 headers={"Authorization": f"Bearer {token}"}) as client:
        async def one(path: str, label: str) -> None:
            began = time.perf_counter()
            try:
                resp = await client.get(path)
                ok = resp.status_code == 200
            except httpx.HTTPError:
                ok = False
            elapsed = time.perf_counter() - began
            if ok:
                latencies.setdefault(label, []).append(elapsed)
            else:
                errors[label] = errors.get(label, 0) + 1

        def label(path: str) -> str:
            base = path.split("?")[0]
            return base.rsplit("/", 1)[0] if base.startswith("/snapshots/") else base

        start = time.perf_counter()
        if sequential:  # one at a time: each request's own cost, no queueing
            total = len(paths)
            for path in paths:
                await one(path, label(path))
        else:
            for path in dict.fromkeys(paths):  # warm-up: connections, caches, imports
                await one(path, "warmup")
            latencies.pop("warmup", None)
            errors.pop("warmup", None)
            tasks = []
            start = time.perf_counter()
            total = int(rate * seconds)
            for i in range(total):
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                path = paths[i % len(paths)]
                tasks.append(asyncio.create_task(one(path, label(path))))
            await asyncio.gather(*tasks)
        wall = time.perf_counter() - start
    report: dict[str, Any] = {"requests": total, "seconds": round(wall, 2),
                              "achieved_rate": round(total / wall, 1), "errors": errors}
    for label, values in sorted(latencies.items()):
        report[label] = {"n": len(values),
                         "p50_ms": round(1000 * _percentile(values, 0.50), 2),
                         "p99_ms": round(1000 * _percentile(values, 0.99), 2),
                         "max_ms": round(1000 * max(values), 2),
                         "mean_ms": round(1000 * statistics.fmean(values), 2)}
    return report


# -- setup and orchestration ----------------------------------------------------------

def _serve(settings: Any, home: Path, **extra: str) -> tuple[subprocess.Popen[bytes], str,
                                                             dict[str, str]]:
    from tidelog.stack.process import free_port

    env = {**os.environ, "TIDELOG_HOME": str(home),
           "TIDELOG_POSTGRES_DSN": settings.postgres_dsn,
           "TIDELOG_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
           "TIDELOG_CONNECT_URL": settings.connect_url, "TIDELOG_MLFLOW_URI": settings.mlflow_uri,
           "TIDELOG_TOPIC_PREFIX": settings.topic_prefix,
           "TIDELOG_CONNECTOR_NAME": settings.connector_name,
           "TIDELOG_ARCHIVE_ROOT": settings.archive_root,
           "TIDELOG_SNAPSHOT_ROOT": settings.snapshot_root,
           "TIDELOG_API_RECIPES": "benchmarks", **extra}
    port = free_port()
    log = open(home / "api.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "tidelog.cli", "api", "serve", "--port",
                             str(port), "--app-dir", str(ROOT), "--log-level", "warning",
                             "--no-access-log"], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url, env
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"the API did not start; see {home / 'api.log'}")


def _wait_job(url: str, token: str, job_id: str) -> dict[str, Any]:
    import httpx

    while True:
        job = httpx.get(f"{url}/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"},
                        timeout=30).json()
        if job["state"] in ("succeeded", "failed"):
            if job["state"] == "failed":
                raise SystemExit(f"job failed: {json.dumps(job['error'])}")
            return dict(job)
        time.sleep(0.2)


def _phase(url: str, token: str, paths: list[str], rate: float, seconds: float,
           sequential: bool = False) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--load", url, "--token", token,
                          "--rate", str(rate), "--seconds", str(seconds),
                          "--paths", json.dumps(paths)]
                         + (["--sequential"] if sequential else []),
                         capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout))


def _setup(settings: Any, rows: int, say: Any) -> Any:
    import psycopg

    from cdc.connector import ConnectorSpec, apply
    from tidelog.demo.capture import wait_for_capture

    name = f"benchapi{os.getpid() % 100000}"
    local = dataclasses.replace(settings, topic_prefix=name, connector_name=name)
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        conn.execute(f"drop table if exists {TABLE}")
        conn.execute(f"create table {TABLE} (id int primary key, name text, "
                     "balance numeric(12, 2))")
        conn.execute(f"insert into {TABLE} select g, 'c' || g, g * 1.25 "
                     "from generate_series(1, %s) g", (rows,))
    apply(local, ConnectorSpec(name, (TABLE,), name), timeout=180)
    wait_for_capture(local, {TABLE: rows}, timeout=300, interval=2.0)
    say(f"captured {rows} rows of {TABLE}")
    return local


def _run(settings: Any, scratch: Path, args: argparse.Namespace, say: Any) -> dict[str, Any]:
    import httpx

    local = _setup(settings, args.rows, say)
    results: dict[str, Any] = {"rate": args.rate, "seconds": args.seconds, "rows": args.rows}
    home = scratch / "api"
    home.mkdir()
    for label, ttl in (("load", "60"), ("cold", "0")):
        proc, url, env = _serve(local, home, TIDELOG_API_LINEAGE_TTL=ttl)
        try:
            token = subprocess.run([sys.executable, "-m", "tidelog.cli", "api", "keys",
                                    "create", "--role", "writer"], env=env, check=True,
                                   capture_output=True, text=True).stdout.strip()
            headers = {"Authorization": f"Bearer {token}"}
            if "sid" not in results:
                job = httpx.post(f"{url}/snapshots", json={"tables": [TABLE]},
                                 headers=headers, timeout=30).json()
                results["sid"] = _wait_job(url, token, job["id"])["result"]["snapshot_id"]
                job = httpx.post(f"{url}/runs", json={"recipe": RECIPE,
                                                      "snapshot_id": results["sid"]},
                                 headers=headers, timeout=30).json()
                results["run_id"] = _wait_job(url, token, job["id"])["result"]["run_id"]
                say(f"snapshot {results['sid']}, run {results['run_id']}")
            sid = results["sid"]
            paths = []
            for k in range(1, KEYS + 1):
                key = json.dumps({"id": k * (args.rows // KEYS)})
                paths += [f"/snapshots/{sid}", f"/lineage/rows?table={TABLE}&key={quote(key)}"]
            report = _phase(url, token, paths, args.rate, args.seconds,
                            sequential=label == "cold")
            results[label] = report
            say(f"{label}: {json.dumps(report)}")
        finally:
            proc.terminate()
            proc.wait(60)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="a TIDELOG_HOME with a running stack")
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    parser.add_argument("--rows", type=int, default=10_000, help="rows in the table")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--load", help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    parser.add_argument("--paths", help=argparse.SUPPRESS)
    parser.add_argument("--sequential", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.load:
        report = asyncio.run(_load(args.load, args.token, json.loads(args.paths), args.rate,
                                   args.seconds, args.sequential))
        print(json.dumps(report))
        return 0

    def say(text: str) -> None:
        print(text, file=sys.stderr if args.json else sys.stdout, flush=True)

    from tidelog import stack
    from tidelog.settings import load_settings

    scratch = Path(tempfile.mkdtemp(prefix="tidelog-bench-api-"))
    own = args.home is None
    home = Path(tempfile.mkdtemp(prefix="tidelog-bench-stack-")) if own else Path(args.home)
    try:
        if own:
            home.chmod(0o755)
            stack.up(home)
        results = _run(load_settings(home), scratch, args, say)
    finally:
        if own:
            stack.down(home)
            shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for label, title in (("load", f"open loop at {args.rate:g}/s, warm"),
                             ("cold", "one at a time, lineage cache off")):
            r = results[label]
            print(f"\n{title}: {r['requests']} requests in {r['seconds']} s "
                  f"({r['achieved_rate']}/s), errors {r['errors'] or 'none'}")
            for endpoint in ("/snapshots", "/lineage/rows"):
                e = r.get(endpoint, {})
                print(f"  GET {endpoint:15} p50 {e.get('p50_ms')} ms  p99 {e.get('p99_ms')} ms"
                      f"  max {e.get('max_ms')} ms  (n={e.get('n')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
