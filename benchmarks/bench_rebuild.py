"""Benchmark: `rebuild RUN_ID` beside the original snapshot + train, on the real stack.

    .venv/bin/python benchmarks/bench_rebuild.py [--home DIR] [--runs 3]
                                                 [--customers 2000] [--rows 1000000]
                                                 [--skip-big] [--json]

Two datasets, each captured once by Debezium into the archive (not timed):

* demo: the `tidelog demo` shop (`examples.shop`, 2000 customers, then its stream of
  changes), trained with the demo's recipe `examples.churn:train` (random forest);
* big: one 1M-row table generated in Postgres with generate_series, trained with
  `amount_model` below (a logistic regression on three columns).

Then, `--runs` times, each into a fresh snapshot root: the original is
`train(at=<cut>)` (materialise the cut from the archive, digest, register in the catalog,
read, fit, log the run and model to the MLflow server), and the rebuild is
`rebuild(run_id)` (read the run, re-materialise the cut from the archive into a temp dir,
check every digest, refit, compare predictions, log the linked run). Prints the medians
and rebuild/original; the target is <= 1.2.

Without --home it starts its own stack in a temporary TIDELOG_HOME and stops it at the end.
"""

from __future__ import annotations

import argparse
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

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tidelog.demo.steps import PARAMS as DEMO_PARAMS  # noqa: E402
from tidelog.demo.steps import RECIPE as DEMO_RECIPE  # noqa: E402
from trainer.recipe import RecipeResult, recipe  # noqa: E402

__all__ = ["amount_model", "main"]

BIG_TABLE = "public.bench_payments_1m"
BIG_RECIPE = "benchmarks.bench_rebuild:amount_model"


@recipe(tables=[BIG_TABLE])
def amount_model(tables: dict[str, pl.DataFrame], params: dict[str, Any], seed: int
                 ) -> RecipeResult:
    """Is a payment flagged? From its quantity, unit price and amount."""
    from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]

    frame = tables[BIG_TABLE]
    x = frame.select(pl.col("qty").cast(pl.Float64), pl.col("price").cast(pl.Float64),
                     pl.col("amount").cast(pl.Float64)).to_pandas()
    y = frame["flagged"].cast(pl.Int8).to_numpy()
    model = LogisticRegression(max_iter=200, random_state=seed).fit(x, y)
    return RecipeResult(model=model, metrics={"accuracy": float(model.score(x, y))},
                        features=x)


def _big_table(dsn: str, rows: int) -> dict[str, int]:
    import psycopg

    name = BIG_TABLE
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"drop table if exists {name}")
        conn.execute(f"create table {name} (id bigint primary key, account int not null, "
                     "qty int not null, price numeric(10, 2) not null, amount numeric(12, 2) "
                     "not null, status text not null, created_at timestamptz not null, "
                     "flagged boolean not null)")
        conn.execute("select setseed(0.3)")
        conn.execute(
            f"insert into {name} select g, (g * 7919) %% 50000, q, p, q * p, "
            "(array['paid','failed','pending'])[1 + (g %% 3)], "
            "timestamptz '2024-01-01 00:00+00' + g * interval '1 second', "
            "q * p > 900 and random() < 0.8 "
            "from (select g, 1 + floor(random() * 20)::int as q, "
            "round((random() * 100)::numeric, 2) as p "
            "from generate_series(1::bigint, %s::bigint) g) s", (rows,))
    return {name: rows}


CREATED: list[tuple[Any, Any]] = []  # (settings, ConnectorSpec) to delete at the end


def _capture(settings: Any, name: str, tables: tuple[str, ...], expected: dict[str, int],
             timeout: float) -> Any:
    from cdc.connector import ConnectorSpec, apply
    from tidelog.demo.capture import wait_for_capture

    local = dataclasses.replace(settings, topic_prefix=name, connector_name=name)
    spec = ConnectorSpec(name, tables, name)
    CREATED.append((local, spec))
    apply(local, spec, timeout=timeout)
    return local, wait_for_capture(local, expected, timeout=timeout, interval=5.0)


def _measure(settings: Any, scratch: Path, label: str, recipe_ref: str,
             tables: tuple[str, ...], cut: Any, params: dict[str, str | int | float],
             runs: int, say: Callable[[str], None], warmup: bool = False) -> dict[str, Any]:
    from trainer.rebuild import rebuild
    from trainer.train import train

    original: list[float] = []
    rebuilt: list[float] = []
    parts: list[dict[str, Any]] = []
    if warmup:
        # The first train in a process pays for importing MLflow's model flavours and
        # scikit-learn; neither the original nor the rebuild should carry that.
        home = scratch / f"{label}-warmup"
        local = dataclasses.replace(settings, home=home, snapshot_root=str(home / "snapshots"))
        rebuild(local, train(local, recipe_ref, at=cut, tables=tables, params=params,
                             seed=1).run_id, workdir=scratch)
        shutil.rmtree(home, ignore_errors=True)
    for i in range(runs):
        home = scratch / f"{label}-{i}"
        local = dataclasses.replace(settings, home=home, snapshot_root=str(home / "snapshots"))
        began = time.perf_counter()
        result = train(local, recipe_ref, at=cut, tables=tables, params=params, seed=1)
        original.append(time.perf_counter() - began)
        began = time.perf_counter()
        report = rebuild(local, result.run_id, workdir=scratch)
        rebuilt.append(time.perf_counter() - began)
        if not report.verified:
            raise SystemExit(f"{label}: rebuild of {result.run_id} not verified: "
                             f"{json.dumps(report.to_json(), default=str)}")
        parts.append({"original": {k: round(v, 3) for k, v in result.timings.items()},
                      "rebuild": {k: round(v, 3) for k, v in report.timings.items()}})
        say(f"  {label} run {i + 1}: original {original[-1]:.2f}s "
            f"(snapshot {result.timings['snapshot']:.2f}, fit+predict "
            f"{result.timings['train']:.2f}), rebuild {rebuilt[-1]:.2f}s (snapshot+digests "
            f"{report.timings['snapshot']:.2f}, fit+predict {report.timings['train']:.2f})")
        shutil.rmtree(home, ignore_errors=True)
    med_original, med_rebuild = statistics.median(original), statistics.median(rebuilt)
    rows = sum(cut_rows for cut_rows in (result.manifest.tables[t].rows for t in tables))
    return {"dataset": label, "rows": rows, "events": sum(p.end - p.start
                                                          for p in cut.partitions),
            "original_seconds": [round(v, 3) for v in original],
            "rebuild_seconds": [round(v, 3) for v in rebuilt],
            "original_median": round(med_original, 3), "rebuild_median": round(med_rebuild, 3),
            "ratio": round(med_rebuild / med_original, 3), "target_ratio": 1.2,
            "within_target": med_rebuild / med_original <= 1.2, "parts": parts}


def _clean_up(settings: Any, shop: Any) -> None:
    import psycopg

    from cdc.connector import delete

    for local, spec in CREATED:
        delete(local, spec, drop_slot=True)
    shop.drop()
    with psycopg.connect(settings.require("postgres_dsn"), autocommit=True) as conn:
        conn.execute(f"drop table if exists {BIG_TABLE}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", help="use the stack of this TIDELOG_HOME (default: own)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--skip-big", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    say = (lambda text: print(text, file=sys.stderr, flush=True)) if args.json else print

    from examples.shop import Shop
    from tidelog import stack
    from tidelog.settings import load_settings

    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    own = args.home is None
    home = Path(args.home or tempfile.mkdtemp(prefix="tlrb-home-")).absolute()
    if own:
        home.chmod(0o755)  # the postgres user must reach its data directory
    os.environ["TIDELOG_HOME"] = str(home)
    scratch = Path(tempfile.mkdtemp(prefix="tlrb-scratch-"))
    results = []
    settings: Any = None
    shop: Any = None
    try:
        began = time.perf_counter()
        stack.up(home)
        say(f"stack up in {time.perf_counter() - began:.1f}s at {home}")
        settings = load_settings(home)
        stamp = f"{os.getpid() % 10000}x{int(time.time()) % 100000}"

        name = f"benchdemo{stamp}"
        shop = Shop(settings.require("postgres_dsn"), f"bench_shop_{stamp}")
        began = time.perf_counter()
        shop.load(args.customers)
        local, _ = _capture(settings, name, shop.tables, dict(shop.events), 300)
        shop.change()
        from tidelog.demo.capture import wait_for_capture

        cut = wait_for_capture(local, dict(shop.events))
        say(f"demo dataset captured in {time.perf_counter() - began:.1f}s "
            f"({sum(shop.events.values())} events)")
        results.append(_measure(local, scratch, "demo", DEMO_RECIPE, shop.tables, cut,
                                DEMO_PARAMS, args.runs, say, warmup=True))

        if not args.skip_big:
            name = f"benchbig{stamp}"
            began = time.perf_counter()
            expected = _big_table(settings.require("postgres_dsn"), args.rows)
            say(f"{args.rows} rows generated in {time.perf_counter() - began:.1f}s")
            began = time.perf_counter()
            local, cut = _capture(settings, name, (BIG_TABLE,), expected, 1800)
            say(f"big table captured and archived in {time.perf_counter() - began:.1f}s")
            results.append(_measure(local, scratch, "1M rows", BIG_RECIPE, (BIG_TABLE,), cut,
                                    {}, args.runs, say))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if not own and shop is not None:  # leave someone else's stack as we found it
            _clean_up(settings, shop)
        if own:
            stack.down(home)
            shutil.rmtree(home, ignore_errors=True)

    say("")
    say(f"{'dataset':10} {'rows':>9} {'original':>9} {'rebuild':>9} {'ratio':>6}  (medians of "
        f"{args.runs}, seconds; target ratio <= 1.2)")
    for r in results:
        say(f"{r['dataset']:10} {r['rows']:>9} {r['original_median']:>9.2f} "
            f"{r['rebuild_median']:>9.2f} {r['ratio']:>6.2f}")
    if args.json:
        print(json.dumps(results, indent=2))
    return 0 if all(r["within_target"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
