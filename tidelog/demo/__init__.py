"""`tidelog demo`: the whole story on the local stack, in about a minute.

Source tables in Postgres -> Debezium -> Kafka -> archive -> snapshot -> MLflow run; then
the database moves on, a second run; then the first model is rebuilt from its recorded
offsets and proven identical, with lineage, a DuckDB query over both snapshots and their
diff. docs/demo.md walks through it; the story is `tidelog.demo.story`.

Each run gets fresh names (schema `shop_<n>`, topic prefix `demo<n>`, connector
`tidelog-demo-<n>`, `tidelog.demo.names`), so the demo can run again and again on the same
stack; the previous run's connector (and its replication slot) and source schema are
removed first, while its archive, snapshots and MLflow runs stay, so its models remain
rebuildable.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tidelog.demo.story import run_demo
from tidelog.errors import TidelogError
from tidelog.settings import home_dir

__all__ = ["register"]


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
