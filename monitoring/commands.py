"""`tidelog monitor report|run`: thin calls into monitoring.report and monitoring.loop."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tidelog.errors import TidelogError
from tidelog.output import print_json
from tidelog.settings import load_settings

__all__ = ["register"]


def _app_dir(args: argparse.Namespace) -> None:
    # A console script does not put the working directory on sys.path; recipes live there.
    path = str(Path(args.app_dir).resolve())
    if path not in sys.path:
        sys.path.insert(0, path)


def _against(args: argparse.Namespace) -> dict[str, Any]:
    return {"against": args.against, "window": args.window}


def _report(args: argparse.Namespace) -> int:
    from monitoring.html import render_html
    from monitoring.report import monitor_report, parse_model_ref

    _app_dir(args)
    model, alias = parse_model_ref(args.model)
    report = monitor_report(load_settings(), model, alias, experiment=args.experiment,
                            decay_threshold=args.decay_threshold, **_against(args))
    if args.format == "html":
        text = render_html(report)
    else:
        text = json.dumps(report.to_json(), indent=2, sort_keys=True) + "\n"
    if args.out:
        Path(args.out).write_text(text)
        t = report.target
        print(f"{args.format} report of {t.model}/{t.version} written to {args.out}: "
              f"{len(report.drifted_columns)} of {len(report.columns)} features drifted"
              f"{' (dataset drift)' if report.dataset_drift else ''}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _print_pass(result: Any, as_json: bool) -> None:
    if isinstance(result, TidelogError):
        print(f"error: {result.message}", file=sys.stderr)
        return
    if as_json:
        print_json(result.to_json())
        return
    r = result.report
    kinds = ", ".join(e["data"]["metric"] for e in result.events) or "none"
    print(f"{r.generated_at} {r.target.model}/{r.target.version}: drift share "
          f"{r.drift_share:.2f} ({', '.join(r.drifted_columns) or 'no feature drifted'}); "
          f"events: {kinds}{' (published)' if result.published else ''}", flush=True)


def _run(args: argparse.Namespace) -> int:
    from monitoring.loop import Monitor
    from monitoring.report import parse_model_ref

    _app_dir(args)
    model, alias = parse_model_ref(args.model)
    if not args.once and args.every is None:
        raise TidelogError("pass --every SECONDS to keep monitoring, or --once for one pass")
    monitor = Monitor(load_settings(), model, alias, experiment=args.experiment,
                      decay_threshold=args.decay_threshold, metrics_port=args.metrics_port,
                      metrics_file=Path(args.metrics_file) if args.metrics_file else None,
                      log_mlflow=not args.no_mlflow, publish=not args.no_events,
                      **_against(args))
    if args.once:
        try:
            result = monitor.step()
        finally:
            monitor.close()
        _print_pass(result, args.json)
        return 0
    monitor.run(args.every, lambda r: _print_pass(r, args.json))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("monitor", help="drift, latency and decay of a served model against "
                       "its training data")
    msub = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("model", metavar="MODEL@ALIAS", help="registered model and alias, "
                       "e.g. churn@champion")
        which = q.add_mutually_exclusive_group()
        which.add_argument("--against", metavar="SNAPSHOT_ID|latest",
                           help="compare with this snapshot (latest: a snapshot of the "
                                "training tables at the latest cut)")
        which.add_argument("--window", type=int, metavar="N",
                           help="compare with the last N served results (default: 1000)")
        q.add_argument("--decay-threshold", type=float, default=0.1,
                       help="relative drop of the live metric that counts as decay")
        q.add_argument("--experiment", default="tidelog", help="MLflow experiment")
        q.add_argument("--app-dir", default=".",
                       help="directory to import the recipe from (default: .)")

    q = msub.add_parser("report", help="a drift report (HTML or JSON) of MODEL@ALIAS")
    common(q)
    q.add_argument("--format", choices=("html", "json"), default="json",
                   help="report format (default: json)")
    q.add_argument("--out", metavar="FILE", help="write the report here (default: stdout)")
    q.set_defaults(handler=_report)

    q = msub.add_parser("run", help="monitor MODEL@ALIAS: log to MLflow, export Prometheus "
                        "metrics, publish drift events")
    common(q)
    when = q.add_mutually_exclusive_group()
    when.add_argument("--every", type=float, metavar="SECONDS", help="seconds between passes")
    when.add_argument("--once", action="store_true", help="one pass, then exit")
    q.add_argument("--metrics-port", type=int, metavar="PORT",
                   help="serve Prometheus metrics on 127.0.0.1:PORT/metrics")
    q.add_argument("--metrics-file", metavar="FILE",
                   help="write Prometheus metrics to FILE (node_exporter textfile collector)")
    q.add_argument("--no-mlflow", action="store_true",
                   help="do not log metrics on the model version's run")
    q.add_argument("--no-events", action="store_true", help="do not publish drift events")
    q.add_argument("--json", action="store_true", help="machine-readable output per pass")
    q.set_defaults(handler=_run)
