"""The demo's story from start to end (`run_demo`), the claims it verifies and where it
tells the user to look afterwards."""

from __future__ import annotations

import shlex
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from tidelog.demo.capture import wait_for_capture
from tidelog.demo.names import DemoNames, drop_previous_runs, next_names, stop_previous_runs
from tidelog.demo.progress import Progress, print_diff, print_query, print_rebuild
from tidelog.demo.steps import (
    MODEL_NAME,
    RECIPE,
    gate_and_predict,
    lineage,
    query_snapshots,
    snapshot_and_train,
)
from tidelog.errors import TidelogError
from tidelog.redact import redact_url
from tidelog.settings import Settings, home_dir, load_settings

__all__ = ["run_demo"]


def _import_in_background() -> None:
    """Import MLflow and scikit-learn (seconds of CPU) while the capture waits on I/O."""
    import importlib
    import threading

    def work() -> None:
        for module in ("sklearn.ensemble", "sklearn.model_selection", "sklearn.metrics",
                       "mlflow", "mlflow.sklearn", "mlflow.models"):
            try:
                importlib.import_module(module)
            except Exception:  # noqa: BLE001 - the real import, later, reports it
                return

    threading.Thread(target=work, name="tidelog-demo-imports", daemon=True).start()


def _fresh_run(p: Progress) -> tuple[dict[str, str], list[str], DemoNames, Settings]:
    """The stack up, earlier runs' connectors stopped, and this run's names and settings."""
    from tidelog import stack

    with p.step("stack", "Local stack: Postgres, Tansu (Kafka protocol), Kafka Connect + "
                         "Debezium, MLflow"):
        status = stack.up(home_dir())
        base = load_settings()
        for key, value in sorted(status.endpoints.items()):
            p.say(f"  {key:18} {value}")
    with p.step("reset", "Fresh names for this run"):
        stopped = stop_previous_runs(base)
        names = next_names(base)
        settings = replace(base, topic_prefix=names.topic_prefix,
                           connector_name=names.connector)
        p.say("  stopped earlier runs' connectors: "
              + (", ".join(f"connector {n}" for n in stopped) or "none"))
        p.say(f"  schema {names.schema}, topic prefix {names.topic_prefix}, connector "
              f"{names.connector}")
    return status.endpoints, stopped, names, settings


def _load_and_capture(settings: Settings, p: Progress, shop: Any, names: DemoNames,
                      customers: int) -> tuple[dict[str, int], Any]:
    """The shop's rows loaded, the connector applied and every event archived: the rows
    loaded per table and the cut that holds them."""
    from cdc.connector import ConnectorSpec, apply

    with p.step("source", f"Source database: a subscription shop ({customers} customers)"):
        rows = shop.load(customers)
        p.say("  " + ", ".join(f"{t} {n}" for t, n in rows.items()) + " rows; types: "
              "bigint, text, date, timestamptz, boolean, numeric, jsonb")
    with p.step("capture", "Capture: Debezium connector -> Kafka topics -> Parquet archive"):
        began = time.perf_counter()
        apply(settings, ConnectorSpec(names.connector, shop.tables, names.topic_prefix),
              timeout=180)
        p.say(f"  connector {names.connector}: initial snapshot done, streaming "
              f"({time.perf_counter() - began:.1f}s)")
        began = time.perf_counter()
        cut = wait_for_capture(settings, dict(shop.events))
        p.say(f"  {sum(shop.events.values())} change events archived "
              f"({time.perf_counter() - began:.1f}s)")
    return rows, cut


def _move_on(settings: Settings, p: Progress, shop: Any) -> tuple[dict[str, int], Any]:
    """The shop's stream of changes, archived: what changed and the cut after it."""
    with p.step("changes", "The business moves on: a stream of changes in Postgres"):
        done = shop.change()
        for what, n in done.items():
            p.say(f"  {what:52} {n:>6} rows")
        cut = wait_for_capture(settings, dict(shop.events))
        p.say(f"  all {sum(shop.events.values())} change events archived")
    return done, cut


def _tidy(settings: Settings, p: Progress, names: DemoNames) -> list[str]:
    with p.step("tidy", "Tidy up earlier runs (slots, publications, source schemas)"):
        try:
            dropped = drop_previous_runs(settings, names)
            p.say(f"  dropped: {', '.join(dropped) or 'nothing'}; their archives, snapshots "
                  "and runs stay, so their models can still be rebuilt")
        except TidelogError as exc:  # a slot still held: the next run drops it
            dropped = []
            p.say(f"  left for the next run: {exc.message}")
    return dropped


def run_demo(customers: int = 2000, progress: Any = None) -> dict[str, Any]:
    """Run the demo; return its summary (what `--json` prints)."""
    from examples.shop import Shop
    from snapshotter.catalog import catalog_path
    from snapshotter.verify import diff_snapshots
    from trainer.rebuild import rebuild

    p = Progress(progress or sys.stdout)
    _import_in_background()
    endpoints, stopped, names, settings = _fresh_run(p)
    shop = Shop(settings.require("postgres_dsn"), names.schema)
    rows, cut1 = _load_and_capture(settings, p, shop, names, customers)
    with p.step("train1", "Snapshot at the captured cut, train the churn model"):
        first = snapshot_and_train(settings, p, shop.tables, cut1, "run 1")
    tracked_before = {k: shop.row("customers", v) for k, v in shop.tracked.items()}
    done, cut2 = _move_on(settings, p, shop)
    with p.step("train2", "Snapshot again, train again"):
        second = snapshot_and_train(settings, p, shop.tables, cut2, "run 2")
    with p.step("rebuild", f"Rebuild run 1 ({first['run_id']}) from its recorded offsets, "
                           "from the archive alone"):
        report = rebuild(settings, first["run_id"])
        print_rebuild(p, report)
    with p.step("lineage", "Lineage"):
        models, rows_seen = lineage(settings, p, (first, second),
                                    f"{names.schema}.customers", shop.tracked)
    with p.step("serve", f"Gate run 2 against {MODEL_NAME}@champion, then predict: each "
                         "answer names its model and the data behind it"):
        served = gate_and_predict(settings, p, first, second)
    with p.step("query", "DuckDB: one query over both snapshots, through the catalog"):
        query = query_snapshots(settings, first["snapshot_id"], second["snapshot_id"])
        print_query(p, query)
    with p.step("diff", f"Diff {first['snapshot_id']} -> {second['snapshot_id']}"):
        diff = diff_snapshots(settings, first["snapshot_id"], second["snapshot_id"],
                              limit=5).to_json()
        print_diff(p, diff)
    dropped = _tidy(settings, p, names)

    verification = _verification(report, first, second, models, diff, served)
    where = _where(settings, first, second, names.schema)
    p.say(f"\n[{time.perf_counter() - p.started:5.1f}s] "
          + ("Verified: same data, same model, although the database moved on."
             if verification["ok"] else "VERIFICATION FAILED: "
             + ", ".join(k for k, v in verification.items() if not v)))
    _print_where(p, where)
    return {
        "ok": verification["ok"],
        "verification": verification,
        "cleanup": {"connectors_stopped": stopped, "dropped": dropped},
        "names": {"number": names.number, "schema": names.schema,
                  "topic_prefix": names.topic_prefix, "connector": names.connector,
                  "model": MODEL_NAME, "recipe": RECIPE},
        "endpoints": endpoints,
        "source": {"rows_loaded": rows, "changes": done, "events": shop.events,
                   "tracked_customers": shop.tracked, "tracked_before": tracked_before},
        "runs": [first, second],
        "rebuild": report.to_json(),
        "lineage": {"models": models, "rows": rows_seen},
        "serve": served,
        "query": query,
        "diff": diff,
        "catalog": str(catalog_path(settings)),
        "where": where,
        "timings": {**p.timings, "total": round(time.perf_counter() - p.started, 3)},
    }


def _verification(report: Any, first: dict[str, Any], second: dict[str, Any],
                  models: list[dict[str, Any]], diff: dict[str, Any],
                  served: dict[str, Any]) -> dict[str, bool]:
    """The demo's claims, each a boolean (docs/demo.md lists them); `ok` when all hold."""
    diff_changes = sum(d["inserted"] + d["updated"] + d["deleted"]
                       for d in diff["tables"].values())
    verification = {
        "dataset_match": report.dataset_match,
        "model_match": report.model_match,
        "artifact_match": report.artifact_match,
        "verified": report.verified,
        "digests_equal": all(c.match for c in report.tables.values())
        and report.digest_recorded == report.digest_rebuilt,
        "snapshots_equal_source": first["source_match"] and second["source_match"],
        "database_moved_on": first["digest"] != second["digest"],
        "lineage_present": all(m["run_id"] and m["cut"]["partitions"] for m in models)
        and any(r["run_id"] == report.new_run_id for r in models[0]["rebuilds"]),
        "diff_non_empty": diff_changes > 0,
        "prediction_names_its_data": served["names_its_data"],
    }
    verification["ok"] = all(verification.values())
    return verification


def _where(settings: Settings, first: dict[str, Any], second: dict[str, Any], schema: str
           ) -> dict[str, str]:
    from snapshotter.catalog import catalog_path

    catalog = catalog_path(settings)
    a, b = first["snapshot_id"], second["snapshot_id"]
    sql = f"select count(*) from snap_{a}.customers; select count(*) from snap_{b}.customers"
    duckdb, tidelog = _command("duckdb"), _command("tidelog")
    return {
        "mlflow_ui": redact_url(settings.require("mlflow_uri")),
        "catalog": str(catalog),
        "duckdb_command": f'{duckdb} -readonly {shlex.quote(str(catalog))} -c "{sql}"',
        "sql_command": f'{tidelog} sql "select * from snap_{b}.customers limit 5"',
        "api_command": f"{tidelog} api serve",
        # `rebuild` reads the topic prefix from the run's own lineage tags.
        "rebuild_command": f"{tidelog} rebuild {first['run_id']}",
        "lineage_command": f"{tidelog} lineage model {first['model']}; {tidelog} lineage row "
                           f"{schema}.customers '{{\"id\": 1}}'",
    }


def _command(name: str) -> str:
    """`name` as the user can type it: bare when the shell finds this environment's own
    (venv activated), else its full path — `make demo` runs .venv/bin/tidelog without
    activating the venv, and `duckdb` (the duckdb-cli package) lives beside it."""
    own = Path(sys.executable).parent / name
    found = shutil.which(name)
    if found is not None and Path(found).resolve() == own.resolve():
        return name
    return shlex.quote(str(own)) if own.exists() else name


def _print_where(p: Progress, where: dict[str, str]) -> None:
    p.say("\nWhere to look:")
    p.say(f"  MLflow UI         {where['mlflow_ui']}  (model {MODEL_NAME}, experiment tidelog)")
    p.say(f"  DuckDB catalog    {where['catalog']}")
    p.say(f"                    {where['duckdb_command']}")
    p.say(f"                    {where['sql_command']}")
    p.say(f"  REST API          {where['api_command']}")
    p.say(f"  rebuild yourself  {where['rebuild_command']}")
    p.say(f"  lineage           {where['lineage_command']}")
