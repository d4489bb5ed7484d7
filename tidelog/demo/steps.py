"""The demo's steps past capture: snapshot and train, lineage, the gate and a prediction,
and one DuckDB query over both snapshots; and the recipe, model and seed they use."""

from __future__ import annotations

import time
from typing import Any

from tidelog.demo.progress import Progress, print_model_lineage, table_line
from tidelog.settings import Settings

__all__ = ["RECIPE", "MODEL_NAME", "PARAMS", "SEED", "GATE_ACCURACY", "snapshot_and_train",
           "lineage", "gate_and_predict", "query_snapshots"]

RECIPE = "examples.churn:train"
MODEL_NAME = "demo-churn"
PARAMS: dict[str, str | int | float] = {"model": "forest", "n_estimators": 60, "max_depth": 8}
SEED = 42
GATE_ACCURACY = 0.5  # what run 2 must reach on its held-out split to be promoted


def _source_ok(report: Any) -> bool:  # a snapshotter.verify.SnapshotReport
    return report.ok and all(t["ok"] for t in (report.source or {}).values())


def snapshot_and_train(settings: Settings, p: Progress, tables: tuple[str, ...], cut: Any,
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
        p.say(table_line(name, table.rows, table.digest))
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


def _row_story(settings: Settings, table: str, key: int) -> dict[str, Any]:
    from trainer.lineage import row_lineage

    found = row_lineage(settings, table, {"id": key}).to_json()
    return {"table": table, "key": {"id": key},
            "snapshots": [{"snapshot_id": s["snapshot_id"], "present": s["present"],
                           "version": s["version"],
                           "email": s["rows"][0].get("email") if s["rows"] else None,
                           "runs": [r["run_id"] for r in s["runs"]]}
                          for s in found["snapshots"]]}


def lineage(settings: Settings, p: Progress, runs: tuple[dict[str, Any], ...], table: str,
            tracked: dict[str, int]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Model lineage of each run's version, and the story of each tracked row."""
    from trainer.lineage import model_lineage

    models = [model_lineage(settings, MODEL_NAME, run["registered_version"]).to_json()
              for run in runs]
    for data in models:
        print_model_lineage(p, data)
    rows_seen = {kind: _row_story(settings, table, key) for kind, key in tracked.items()}
    for kind, story in rows_seen.items():
        seen = "; ".join(
            f"{s['snapshot_id']}: " + (f"version {s['version']} ({s['email']})"
                                       if s["present"] else "absent")
            for s in story["snapshots"])
        p.say(f"  row {table} id={story['key']['id']} ({kind}): {seen}")
    return models, rows_seen


def gate_and_predict(settings: Settings, p: Progress, first: dict[str, Any],
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


def query_snapshots(settings: Settings, first: str, second: str) -> dict[str, Any]:
    """One query over both snapshots, through the catalog: its SQL and its answer."""
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
