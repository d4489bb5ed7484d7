"""`tidelog pipeline ...`, `tidelog gate`, `tidelog verify run`: parsing and printing only;
the work is in pipelines.service, pipelines.worker, pipelines.gate and pipelines.ci."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any

from tidelog.errors import ConfigError
from tidelog.output import print_json as _print_json
from tidelog.settings import load_settings

__all__ = ["register"]


def _app_dir(args: argparse.Namespace) -> None:
    path = str(Path(args.app_dir).resolve())
    if path not in sys.path:  # recipes and evaluators are imported from there
        sys.path.insert(0, path)


def _print_plan(decided: Any) -> None:
    print(f"{'FIRE' if decided.fire else 'wait'}: {decided.reason}")
    for t in decided.triggers:
        print(f"  {t.kind:13} {'due' if t.due else 'not due':8} {t.reason}")


def _evaluate(args: argparse.Namespace) -> int:
    from pipelines.config import load_pipeline
    from pipelines.service import evaluate_pipeline

    _app_dir(args)
    pipeline = load_pipeline(args.file)
    decided, cycle = evaluate_pipeline(load_settings(), pipeline, dry_run=args.dry_run)
    if args.json:
        _print_json({"pipeline": pipeline.name, "plan": decided.to_json(),
                     "cycle": cycle.to_json() if cycle else None})
        return 0
    _print_plan(decided)
    if cycle is not None:
        _print_cycle(cycle)
    return 0


def _print_cycle(cycle: Any) -> None:
    verb = "trained" if cycle.trained else "found"
    print(f"  {verb} run {cycle.run_id} (version {cycle.version}) at cut "
          f"{cycle.cut_fingerprint[:12]}; gate: {cycle.gate.decision if cycle.gate else '-'}"
          f"{', promoted' if cycle.promoted else ''}")


def _run(args: argparse.Namespace) -> int:
    from pipelines.config import load_pipeline
    from pipelines.worker import Worker

    _app_dir(args)
    pipeline = load_pipeline(args.file)

    def report(decided: Any, cycle: Any) -> None:
        if args.json:
            _print_json({"plan": decided.to_json(), "cycle": cycle.to_json() if cycle else None})
        else:
            _print_plan(decided)
            if cycle is not None:
                _print_cycle(cycle)
        sys.stdout.flush()

    worker = Worker(load_settings(), pipeline, interval=args.interval, report=report)
    worker.run(follow=args.follow)
    return 0


def _trigger(args: argparse.Namespace) -> int:
    from pipelines.config import load_pipeline
    from pipelines.service import request_retrain

    name = load_pipeline(args.pipeline).name if args.pipeline.endswith(".toml") \
        else args.pipeline
    event = request_retrain(load_settings(), name, args.reason, args.requested_by)
    _print_json(event.to_json()) if args.json else print(
        f"retrain of pipeline {name} requested (event {event.id})")
    return 0


def _drift(args: argparse.Namespace) -> int:
    from tidelog.events import Publisher, new_event

    settings = load_settings()
    at = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    data: dict[str, Any] = {"model": args.model, "score": args.score, "metric": args.metric,
                            "version": args.version, "detected_at": at,
                            "details": {"reason": args.reason} if args.reason else {}}
    event = new_event(settings, "drift.detected", args.model, data,
                      (args.model, args.version or "", args.metric, repr(args.score), at),
                      "cli", time=at)
    Publisher(settings).publish(event)
    _print_json(event.to_json()) if args.json else print(
        f"drift {args.metric}={args.score} of {args.model} published (event {event.id})")
    return 0


def _history(args: argparse.Namespace) -> int:
    from pipelines.config import load_pipeline
    from pipelines.history import pipeline_history

    pipeline = load_pipeline(args.file)
    rows = pipeline_history(load_settings(), pipeline)
    if args.json:
        _print_json(rows)
        return 0
    for row in rows:
        print(f"{row['started_at']}  run {row['run_id']}  {row['status']:8} "
              f"triggers={row['triggers'] or '-'}  gate={row['gate'] or '-'}  "
              f"version={row['version'] or '-'}")
    return 0


def _gate(args: argparse.Namespace) -> int:
    from pipelines.config import load_pipeline
    from pipelines.gate import gate, parse_threshold

    _app_dir(args)
    model, sep, alias = args.champion.partition("@")
    if not sep or not model or not alias:
        raise ConfigError(f"--champion {args.champion!r} is not MODEL@ALIAS, e.g. "
                          "churn@champion")
    thresholds = [parse_threshold(t) for t in args.threshold]
    evaluator = args.evaluator
    experiment = args.experiment
    if args.pipeline:
        pipeline = load_pipeline(args.pipeline)
        thresholds = thresholds or list(pipeline.gate)
        evaluator = evaluator or pipeline.evaluator
    result = gate(load_settings(), args.candidate, model, alias, thresholds,
                  evaluator=evaluator, experiment=experiment)
    if args.json:
        _print_json(result.to_json())
    else:
        champ = (f"{model}/{result.champion_version} (run {result.champion_run_id})"
                 if result.champion_version else f"no {model}@{alias} yet")
        print(f"gate {'PASSED' if result.passed else 'FAILED'}: run {args.candidate} vs "
              f"{champ}")
        for c in result.checks:
            print(f"  {c.metric:16} {'ok' if c.passed else 'FAIL':5} {c.reason}")
    return 0 if result.passed else 1


def _verify_run(args: argparse.Namespace) -> int:
    from pipelines.ci import verify_run

    _app_dir(args)
    report = verify_run(load_settings(), args.run_id, rebuild=args.rebuild,
                        experiment=args.experiment)
    if args.json:
        _print_json(report)
    else:
        snap = report["snapshot"]
        print(f"run {args.run_id}: snapshot {report['snapshot_id']} "
              + ("missing (" + snap["reason"] + ")" if not snap["present"]
                 else "matches its digests" if snap["ok"] else "DIFFERS from its digests"))
        if "rebuild" in report:
            r = report["rebuild"]
            print(f"  rebuild: dataset_match={r['dataset_match']} model_match="
                  f"{r['model_match']} -> run {r['new_run_id']}")
        print("verified" if report["ok"] else "NOT verified")
    return 0 if report["ok"] else 1


def register(sub: Any) -> None:
    def common(p: argparse.ArgumentParser, app_dir: bool = True) -> None:
        p.add_argument("--json", action="store_true", help="machine-readable output")
        if app_dir:
            p.add_argument("--app-dir", default=".",
                           help="directory to import the recipe from (default: .)")

    pipe = sub.add_parser("pipeline", help="training that runs itself: triggers, gate, alias")
    pipe_sub = pipe.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = pipe_sub.add_parser("evaluate", help="say for each trigger whether it fires and why; "
                            "without --dry-run also act on it once")
    p.add_argument("file", metavar="FILE", help="pipeline file (TOML)")
    p.add_argument("--dry-run", action="store_true", help="decide only: train nothing")
    common(p)
    p.set_defaults(handler=_evaluate)
    p = pipe_sub.add_parser("run", help="evaluate and act; with --follow keep doing it")
    p.add_argument("file", metavar="FILE", help="pipeline file (TOML)")
    p.add_argument("--follow", action="store_true",
                   help="keep running: consume drift/retrain events, re-evaluate periodically")
    p.add_argument("--interval", type=float, default=10.0,
                   help="seconds between evaluations (default 10)")
    common(p)
    p.set_defaults(handler=_run)
    p = pipe_sub.add_parser("trigger", help="publish a retrain.requested event (manual trigger)")
    p.add_argument("pipeline", metavar="NAME|FILE", help="pipeline name or its file (.toml)")
    p.add_argument("--reason", default="requested from the CLI", help="why")
    p.add_argument("--requested-by", default="cli", help="who asks")
    common(p, app_dir=False)
    p.set_defaults(handler=_trigger)
    p = pipe_sub.add_parser("drift", help="publish a drift.detected event for a model")
    p.add_argument("--model", required=True, help="registered model name")
    p.add_argument("--score", type=float, required=True, help="drift score")
    p.add_argument("--metric", default="drift", help="name of the drift measure")
    p.add_argument("--version", help="model version that drifted")
    p.add_argument("--reason", help="free text for people")
    common(p, app_dir=False)
    p.set_defaults(handler=_drift)
    p = pipe_sub.add_parser("history", help="the pipeline's runs: triggers, gate, version")
    p.add_argument("file", metavar="FILE", help="pipeline file (TOML)")
    common(p, app_dir=False)
    p.set_defaults(handler=_history)

    p = sub.add_parser("gate", help="does a run's model beat MODEL@ALIAS? exit 0 yes, 1 no")
    p.add_argument("--candidate", required=True, metavar="RUN", help="candidate run id")
    p.add_argument("--champion", required=True, metavar="MODEL@ALIAS",
                   help="e.g. churn@champion")
    p.add_argument("--threshold", action="append", default=[],
                   metavar="METRIC[:K=V,...]",
                   help="e.g. accuracy:threshold=0.7,min_relative_change=0.01 (repeatable)")
    p.add_argument("--pipeline", metavar="FILE", help="take thresholds and evaluator from it")
    p.add_argument("--evaluator", metavar="pkg.module:fn",
                   help="scores a model (default: `evaluate` next to the run's recipe)")
    p.add_argument("--experiment", default="tidelog", help="MLflow experiment")
    common(p)
    p.set_defaults(handler=_gate)

    verify = sub.add_parser("verify", help="check a run against what it recorded (for CI)")
    verify_sub = verify.add_subparsers(dest="what", required=True, metavar="WHAT")
    p = verify_sub.add_parser("run", help="the run's snapshot digests; --rebuild also "
                              "rebuilds and retrains. Exit 0 verified, 1 not")
    p.add_argument("run_id", metavar="RUN")
    p.add_argument("--rebuild", action="store_true",
                   help="re-materialise from the archive and retrain (tidelog rebuild)")
    p.add_argument("--experiment", default="tidelog", help="MLflow experiment")
    common(p)
    p.set_defaults(handler=_verify_run)
