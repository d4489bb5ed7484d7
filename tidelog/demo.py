"""`tidelog demo`: the whole story on the local stack, in about a minute.

Source tables in Postgres -> Debezium -> Kafka -> archive -> snapshot -> MLflow run; then
the database moves on, a second run; then the first model is rebuilt from its recorded
offsets and proven identical, with lineage, a DuckDB query over both snapshots and their
diff. docs/demo.md walks through it.

Each run gets fresh names (schema `shop_<n>`, topic prefix `demo<n>`, connector
`tidelog-demo-<n>`), so the demo can run again and again on the same stack; the previous
run's connector (and its replication slot) and source schema are removed first, while its
archive, snapshots and MLflow runs stay, so its models remain rebuildable.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import re
import shlex
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tidelog.errors import ConnectorFailed, TidelogError
from tidelog.redact import redact_url
from tidelog.retry import poll
from tidelog.settings import Settings, home_dir, load_settings
from tidelog.topics import table_topic

__all__ = ["register", "run_demo", "DemoNames", "wait_for_capture", "RECIPE", "PARAMS",
           "MODEL_NAME"]

RECIPE = "examples.churn:train"
MODEL_NAME = "demo-churn"
PARAMS: dict[str, str | int | float] = {"model": "forest", "n_estimators": 60, "max_depth": 8}
SEED = 42
GATE_ACCURACY = 0.5  # what run 2 must reach on its held-out split to be promoted
CONNECTOR_RE = re.compile(r"^tidelog-demo-(\d+)$")
SCHEMA_RE = re.compile(r"^shop_(\d+)$")
SLOT_RE = re.compile(r"^tidelog_demo_(\d+)$")
TOPIC_RE = re.compile(r"^demo(\d+)\.")


@dataclass(frozen=True)
class DemoNames:
    number: int

    @property
    def schema(self) -> str:
        return f"shop_{self.number}"

    @property
    def topic_prefix(self) -> str:
        return f"demo{self.number}"

    @property
    def connector(self) -> str:
        return f"tidelog-demo-{self.number}"


class Progress:
    """Progress lines, on stdout, or on stderr when stdout carries the JSON summary."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.started = time.perf_counter()
        self.timings: dict[str, float] = {}

    def say(self, text: str = "") -> None:
        print(text, file=self.stream, flush=True)

    @contextlib.contextmanager
    def step(self, name: str, title: str) -> Iterator[None]:
        self.say(f"\n[{time.perf_counter() - self.started:5.1f}s] {title}")
        began = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - began, 3)


# -- names and clean-up ------------------------------------------------------------------

def _connectors(settings: Settings) -> list[str]:
    from tidelog.adapters.connect import KafkaConnect

    with KafkaConnect.for_settings(settings) as connect:
        return connect.connectors()


def _schemas(settings: Settings) -> list[str]:
    from tidelog.adapters import postgres

    dsn = settings.require("postgres_dsn")
    with postgres.connect(dsn) as conn, postgres.postgres_errors("list schemas", dsn):
        return [r[0] for r in conn.execute("select nspname from pg_namespace")]


def next_names(settings: Settings) -> DemoNames:
    """One more than any demo run the stack, the database or the archive remembers."""
    from snapshotter.archive import Archive

    seen = [0]
    for name in _connectors(settings):
        if m := CONNECTOR_RE.match(name):
            seen.append(int(m[1]))
    for name in _schemas(settings):
        if m := SCHEMA_RE.match(name):
            seen.append(int(m[1]))
    if Path(settings.archive_root).exists() or "://" in settings.archive_root:
        for topic in Archive(settings.archive_root).topics():
            if m := TOPIC_RE.match(topic):
                seen.append(int(m[1]))
    return DemoNames(max(seen) + 1)


def stop_previous_runs(settings: Settings) -> list[str]:
    """Delete earlier demo connectors; their slots are dropped at the end of the run
    (`drop_previous_runs`), once Debezium has let go of them."""
    from cdc.connector import ConnectorSpec, delete

    stopped = []
    for name in _connectors(settings):
        if m := CONNECTOR_RE.match(name):
            delete(settings, ConnectorSpec(name, (), DemoNames(int(m[1])).topic_prefix))
            stopped.append(name)
    return stopped


def drop_previous_runs(settings: Settings, current: DemoNames) -> list[str]:
    """Drop the replication slots, publications and source schemas of earlier runs.

    Their archives, snapshots and MLflow runs stay: their models remain rebuildable."""
    from cdc.connector import ConnectorSpec, delete
    from examples.shop import Shop
    from tidelog.adapters import postgres

    dropped = []
    dsn = settings.require("postgres_dsn")
    with postgres.connect(dsn) as conn, postgres.postgres_errors("list slots", dsn):
        slots = [r[0] for r in conn.execute("select slot_name from pg_replication_slots")]
    for slot in slots:
        number = int(slot.rsplit("_", 1)[1]) if SLOT_RE.match(slot) else None
        if number is not None and number != current.number:
            names = DemoNames(number)
            delete(settings, ConnectorSpec(names.connector, (), names.topic_prefix),
                   drop_slot=True)
            dropped.append(f"slot {slot}")
    for schema in _schemas(settings):
        if SCHEMA_RE.match(schema) and schema != current.schema:
            Shop(settings.require("postgres_dsn"), schema).drop()
            dropped.append(f"schema {schema}")
    return dropped


# -- capture -------------------------------------------------------------------------------

def wait_for_capture(settings: Settings, expected: dict[str, int], timeout: float = 120,
                     interval: float = 0.3) -> Any:
    """Archive until every table's topic holds its expected number of change events,
    whole transactions only; return that cut (a `snapshotter.cut.Cut`).

    Each poll archives what is new, so a long capture polled often leaves many small
    segments: poll less often (`interval`) for big loads."""

    from snapshotter.snapshots import resolve_cut

    tables = sorted(expected)
    have: dict[str, int] = {}
    last_error = ""

    def attempt() -> Any:
        nonlocal last_error
        try:
            cut = resolve_cut(settings, tables, "latest")
        except TidelogError as exc:
            last_error = f"; last error: {exc.message}"  # e.g. topics not created yet
            return None
        last_error = ""
        have.update({t: sum(p.end - p.start for p in cut.partitions
                            if p.topic == table_topic(settings.topic_prefix, t))
                     for t in tables})
        return cut if all(have[t] >= expected[t] for t in tables) else None

    def timed_out(_error: TidelogError | None) -> TidelogError:
        behind = ", ".join(f"{t} {have.get(t, 0)}/{expected[t]}" for t in tables)
        return ConnectorFailed(
            f"the connector had not delivered every change after {timeout:.0f}s "
            f"(events archived/expected: {behind}){last_error}; check the Kafka "
            "Connect log (`tidelog stack status` shows where it is)")

    return poll(attempt, timeout=timeout, interval=interval, timed_out=timed_out)


# -- the story -----------------------------------------------------------------------------

def _table_line(name: str, rows: int, digest: str) -> str:
    return f"    {name:26} {rows:>7} rows  digest {digest[:16]}"


def _source_ok(report: Any) -> bool:  # a snapshotter.verify.SnapshotReport
    return report.ok and all(t["ok"] for t in (report.source or {}).values())


def _snapshot_and_train(settings: Settings, p: Progress, tables: tuple[str, ...], cut: Any,
                        label: str) -> dict[str, Any]:
    from snapshotter.snapshots import create_snapshot
    from snapshotter.verify import verify_snapshot
    from trainer.train import train

    began = time.perf_counter()
    manifest = create_snapshot(settings, tables, cut)
    snap_seconds = time.perf_counter() - began
    build = "full build" if manifest.built_from == "full" else \
        f"incremental, from {manifest.built_from}"
    p.say(f"  snapshot {manifest.id} ({build}, {snap_seconds:.2f}s)")
    for name, table in sorted(manifest.tables.items()):
        p.say(_table_line(name, table.rows, table.digest))
    check = verify_snapshot(settings, manifest.id, against_source=True)
    same = _source_ok(check)
    p.say(f"  compared value by value with Postgres: {'identical' if same else 'DIFFERENT'}")
    result = train(settings, RECIPE, snapshot_id=manifest.id, params=PARAMS, seed=SEED,
                   register=MODEL_NAME)
    metrics = ", ".join(f"{k}={result.metrics[k]:.3f}" for k in ("accuracy", "roc_auc")
                        if k in result.metrics)
    p.say(f"  trained {RECIPE} ({PARAMS['model']}, seed {SEED}): {metrics}")
    p.say(f"  MLflow run {result.run_id}, registered as {MODEL_NAME}/"
          f"{result.registered_version}")
    return {"label": label, "run_id": result.run_id, "snapshot_id": manifest.id,
            "model": f"{MODEL_NAME}/{result.registered_version}",
            "registered_version": result.registered_version,
            "built_from": manifest.built_from, "digest": manifest.digest,
            "cut": manifest.cut.to_json(),
            "tables": {n: {"rows": t.rows, "digest": t.digest}
                       for n, t in sorted(manifest.tables.items())},
            "source_match": same, "metrics": result.metrics,
            "predictions_sha256": result.predictions_sha256,
            "seconds": {"snapshot": round(snap_seconds, 3),
                        "train": round(result.timings["total"], 3)}}


def _print_rebuild(p: Progress, report: Any) -> None:
    for name, check in sorted(report.tables.items()):
        mark = "same" if check.match else "DIFFERENT"
        p.say(f"    {name:26} recorded {check.recorded_digest[:16]}  rebuilt "
              f"{(check.rebuilt_digest or '-')[:16]}  {mark}")
    p.say(f"  dataset_match={report.dataset_match}  model_match={report.model_match} "
          f"(predictions sha256 {report.predictions_rebuilt[:16]})  "
          f"artifact_match={report.artifact_match}")
    p.say(f"  rebuild took {report.timings['total']:.1f}s; new run {report.new_run_id} is "
          f"tagged tidelog.rebuild_of={report.run_id}")


def _print_model_lineage(p: Progress, data: dict[str, Any]) -> None:
    model = data["model"]
    p.say(f"  {model['name']}/{model['version']} <- run {data['run_id']} <- snapshot "
          f"{data['snapshot_id']}")
    for part in data["cut"]["partitions"]:
        p.say(f"      {part['topic']}[{part['partition']}] offsets {part['start']}.."
              f"{part['end']}  (cluster {part['cluster_id']}, topic id {part['topic_id']})")
    source = data["source"]
    p.say(f"      <- connector {source.get('connector')} <- {source.get('database')} "
          f"(LSN up to {data['lsn']}); rebuilds: {len(data['rebuilds'])}")


def _query(settings: Settings, first: str, second: str) -> dict[str, Any]:
    from snapshotter.catalog import run_sql

    def side(label: str, sid: str) -> str:
        return (f"select '{label}' as snapshot, "
                f"(select count(*) from snap_{sid}.customers) as customers, "
                f"(select count(*) from snap_{sid}.subscriptions where cancelled_at is null) "
                "as active_subscriptions, "
                f"(select sum(amount) from snap_{sid}.payments where status = 'paid') "
                "as revenue_paid, "
                f"(select count(*) from snap_{sid}.payments where status = 'refunded') "
                "as refunds")

    sql = f"{side('run 1', first)}\nunion all\n{side('run 2', second)}\norder by snapshot"
    columns, rows = run_sql(settings, sql)
    return {"sql": sql, "columns": columns, "rows": [list(r) for r in rows]}


def _print_query(p: Progress, query: dict[str, Any]) -> None:
    widths = [max(len(str(c)), *(len(str(r[i])) for r in query["rows"]))
              for i, c in enumerate(query["columns"])]
    p.say("    " + "  ".join(str(c).rjust(w) for c, w in zip(query["columns"], widths,
                                                            strict=True)))
    for row in query["rows"]:
        p.say("    " + "  ".join(str(v).rjust(w) for v, w in zip(row, widths, strict=True)))


def _row_story(settings: Settings, table: str, key: int) -> dict[str, Any]:
    from trainer.lineage import row_lineage

    found = row_lineage(settings, table, {"id": key}).to_json()
    return {"table": table, "key": {"id": key},
            "snapshots": [{"snapshot_id": s["snapshot_id"], "present": s["present"],
                           "version": s["version"],
                           "email": s["rows"][0].get("email") if s["rows"] else None,
                           "runs": [r["run_id"] for r in s["runs"]]}
                          for s in found["snapshots"]]}


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


def run_demo(customers: int = 2000, progress: Any = None) -> dict[str, Any]:
    """Run the demo; return its summary (what `--json` prints)."""
    from cdc.connector import ConnectorSpec, apply
    from examples.shop import Shop
    from snapshotter.catalog import catalog_path
    from snapshotter.verify import diff_snapshots
    from tidelog import stack
    from trainer.rebuild import rebuild

    p = Progress(progress or sys.stdout)
    summary: dict[str, Any] = {}
    _import_in_background()
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
    shop = Shop(settings.require("postgres_dsn"), names.schema)
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
        cut1 = wait_for_capture(settings, dict(shop.events))
        p.say(f"  {sum(shop.events.values())} change events archived "
              f"({time.perf_counter() - began:.1f}s)")
    with p.step("train1", "Snapshot at the captured cut, train the churn model"):
        first = _snapshot_and_train(settings, p, shop.tables, cut1, "run 1")
    tracked = {"before": {k: shop.row("customers", v) for k, v in shop.tracked.items()}}
    with p.step("changes", "The business moves on: a stream of changes in Postgres"):
        done = shop.change()
        for what, n in done.items():
            p.say(f"  {what:52} {n:>6} rows")
        cut2 = wait_for_capture(settings, dict(shop.events))
        p.say(f"  all {sum(shop.events.values())} change events archived")
    with p.step("train2", "Snapshot again, train again"):
        second = _snapshot_and_train(settings, p, shop.tables, cut2, "run 2")
    with p.step("rebuild", f"Rebuild run 1 ({first['run_id']}) from its recorded offsets, "
                           "from the archive alone"):
        report = rebuild(settings, first["run_id"])
        _print_rebuild(p, report)
    with p.step("lineage", "Lineage"):
        models, rows_seen = _lineage(settings, p, (first, second),
                                     f"{names.schema}.customers", shop.tracked)
    with p.step("serve", f"Gate run 2 against {MODEL_NAME}@champion, then predict: each "
                         "answer names its model and the data behind it"):
        served = _gate_and_predict(settings, p, first, second)
    with p.step("query", "DuckDB: one query over both snapshots, through the catalog"):
        query = _query(settings, first["snapshot_id"], second["snapshot_id"])
        _print_query(p, query)
    with p.step("diff", f"Diff {first['snapshot_id']} -> {second['snapshot_id']}"):
        diff = diff_snapshots(settings, first["snapshot_id"], second["snapshot_id"],
                              limit=5).to_json()
        _print_diff(p, diff)
    with p.step("tidy", "Tidy up earlier runs (slots, publications, source schemas)"):
        try:
            dropped = drop_previous_runs(settings, names)
            p.say(f"  dropped: {', '.join(dropped) or 'nothing'}; their archives, snapshots "
                  "and runs stay, so their models can still be rebuilt")
        except TidelogError as exc:  # a slot still held: the next run drops it
            dropped = []
            p.say(f"  left for the next run: {exc.message}")

    verification = _verification(report, first, second, models, diff, served)
    where = _where(settings, first, second, names.schema)
    p.say(f"\n[{time.perf_counter() - p.started:5.1f}s] "
          + ("Verified: same data, same model, although the database moved on."
             if verification["ok"] else "VERIFICATION FAILED: "
             + ", ".join(k for k, v in verification.items() if not v)))
    _print_where(p, where)
    rebuilt = report.to_json()
    summary.update({
        "ok": verification["ok"],
        "verification": verification,
        "cleanup": {"connectors_stopped": stopped, "dropped": dropped},
        "names": {"number": names.number, "schema": names.schema,
                  "topic_prefix": names.topic_prefix, "connector": names.connector,
                  "model": MODEL_NAME, "recipe": RECIPE},
        "endpoints": status.endpoints,
        "source": {"rows_loaded": rows, "changes": done, "events": shop.events,
                   "tracked_customers": shop.tracked,
                   "tracked_before": tracked["before"]},
        "runs": [first, second],
        "rebuild": rebuilt,
        "lineage": {"models": models, "rows": rows_seen},
        "serve": served,
        "query": query,
        "diff": diff,
        "catalog": str(catalog_path(settings)),
        "where": where,
        "timings": {**p.timings, "total": round(time.perf_counter() - p.started, 3)},
    })
    return summary


def _lineage(settings: Settings, p: Progress, runs: tuple[dict[str, Any], ...], table: str,
             tracked: dict[str, int]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Model lineage of each run's version, and the story of each tracked row."""
    from trainer.lineage import model_lineage

    models = [model_lineage(settings, MODEL_NAME, run["registered_version"]).to_json()
              for run in runs]
    for data in models:
        _print_model_lineage(p, data)
    rows_seen = {kind: _row_story(settings, table, key) for kind, key in tracked.items()}
    for kind, story in rows_seen.items():
        seen = "; ".join(
            f"{s['snapshot_id']}: " + (f"version {s['version']} ({s['email']})"
                                       if s["present"] else "absent")
            for s in story["snapshots"])
        p.say(f"  row {table} id={story['key']['id']} ({kind}): {seen}")
    return models, rows_seen


def _print_diff(p: Progress, diff: dict[str, Any]) -> None:
    for name, d in sorted(diff["tables"].items()):
        added = f", columns added: {', '.join(d['columns_added'])}" \
            if d["columns_added"] else ""
        p.say(f"    {name:26} +{d['inserted']} inserted, ~{d['updated']} updated, "
              f"-{d['deleted']} deleted{added}")


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


def _print_where(p: Progress, where: dict[str, str]) -> None:
    p.say("\nWhere to look:")
    p.say(f"  MLflow UI         {where['mlflow_ui']}  (model {MODEL_NAME}, experiment tidelog)")
    p.say(f"  DuckDB catalog    {where['catalog']}")
    p.say(f"                    {where['duckdb_command']}")
    p.say(f"                    {where['sql_command']}")
    p.say(f"  REST API          {where['api_command']}")
    p.say(f"  rebuild yourself  {where['rebuild_command']}")
    p.say(f"  lineage           {where['lineage_command']}")


def _gate_and_predict(settings: Settings, p: Progress, first: dict[str, Any],
                      second: dict[str, Any]) -> dict[str, Any]:
    """Run 1's version becomes the champion; run 2 is gated against it on run 2's own
    held-out split (accuracy at least GATE_ACCURACY) and promoted if it passes; then the
    champion answers for three customers of the second snapshot."""
    from examples.churn import features
    from pipelines.config import MetricThreshold
    from pipelines.gate import gate
    from pipelines.registry import Registry
    from serving.predict import Predictor
    from snapshotter.snapshots import open_snapshot
    from trainer.tracking import DEFAULT_EXPERIMENT

    registry = Registry(settings, DEFAULT_EXPERIMENT)
    registry.set_alias(MODEL_NAME, "champion", str(first["registered_version"]))
    p.say(f"  {MODEL_NAME}@champion -> version {first['registered_version']} (run 1)")
    result = gate(settings, second["run_id"], MODEL_NAME, "champion",
                  [MetricThreshold("accuracy", threshold=GATE_ACCURACY)])
    for check in result.checks:
        p.say(f"  gate: {check.metric} {result.candidate_metrics.get(check.metric, 0):.3f} "
              f"(champion {(result.champion_metrics or {}).get(check.metric, 0):.3f}), "
              f"needs >= {GATE_ACCURACY}: {'pass' if check.passed else 'fail'}")
    champion = second if result.passed else first
    if result.passed:
        registry.set_alias(MODEL_NAME, "champion", str(second["registered_version"]))
    p.say(f"  {result.decision}: {MODEL_NAME}@champion is version "
          f"{champion['registered_version']} ({champion['label']})")
    frame, _ = features(open_snapshot(settings, second["snapshot_id"]).tables())
    answer = Predictor(settings).predict(MODEL_NAME, frame.head(3).to_dicts()).to_json()
    p.say(f"  predictions {answer['predictions']} by {MODEL_NAME} version "
          f"{answer['model']['version']}, run {answer['model']['run_id']}, trained on "
          f"snapshot {answer['snapshot_id']} (cut digest {answer['cut_digest'][:16]}...)")
    names = (answer["model"]["run_id"] == champion["run_id"]
             and answer["snapshot_id"] == champion["snapshot_id"] and bool(answer["cut_digest"]))
    return {"gate": result.to_json(), "champion": champion["model"], "prediction": answer,
            "names_its_data": names}


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


# -- command ---------------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet(log: Path) -> Iterator[None]:
    """MLflow and friends print run links and warnings; the demo tells its own story and
    keeps theirs in `log`."""
    sink = io.StringIO()
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), \
                contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)
        with contextlib.suppress(OSError):
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(sink.getvalue())


def _demo(args: argparse.Namespace) -> int:
    if args.rows < 50:
        raise TidelogError("--rows must be at least 50 (customers), or a churn model has "
                           "too few of each class to learn from")
    # Progress goes to the real stream; with --json, stdout carries the summary alone.
    stream = sys.stderr if args.json else sys.stdout
    with _quiet(home_dir() / "demo.log"):
        summary = run_demo(args.rows, progress=stream)
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True, default=str))
    return 0 if summary["ok"] else 1


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="the whole story on the local stack: capture, snapshot, "
                                    "train, change, rebuild and verify (about a minute)")
    p.add_argument("--rows", type=int, default=2000, metavar="N",
                   help="customers to generate (default 2000; about 1.5 subscriptions and "
                        "13 payments each)")
    p.add_argument("--json", action="store_true",
                   help="print a machine-readable summary, with the verification results, "
                        "on stdout (progress goes to stderr)")
    p.set_defaults(handler=_demo)
