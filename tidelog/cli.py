"""The `tidelog` command: a thin shell over the library; no logic lives here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from tidelog.errors import TidelogError
from tidelog.output import print_json as _print_json
from tidelog.settings import home_dir, load_settings

__all__ = ["main", "build_parser"]

Handler = Callable[[argparse.Namespace], int]


# -- stack ----------------------------------------------------------------------------

def _stack_up(args: argparse.Namespace) -> int:
    from tidelog import stack

    status = stack.up(home_dir())
    if args.json:
        _print_json(status.to_json())
    else:
        _print_stack(status.to_json())
    return 0


def _stack_down(args: argparse.Namespace) -> int:
    from tidelog import stack

    status = stack.down(home_dir())
    if args.json:
        _print_json(status.to_json())
    else:
        print("stack stopped")
    return 0


def _stack_status(args: argparse.Namespace) -> int:
    from tidelog import stack

    status = stack.status(home_dir())
    if args.json:
        _print_json(status.to_json())
    else:
        _print_stack(status.to_json())
    return 0 if status.running else 3


def _print_stack(data: dict[str, Any]) -> None:
    for name, comp in data["components"].items():
        pid = f"pid {comp['pid']}" if "pid" in comp else ""
        print(f"{name:9} {comp['state']:8} {pid}")
    for key, value in data["endpoints"].items():
        print(f"{key:18} {value}")


# -- connector ------------------------------------------------------------------------

def _spec(args: argparse.Namespace, tables: str | None = None) -> Any:
    from cdc.connector import ConnectorSpec
    from cdc.spec import parse_tables

    settings = load_settings()
    return settings, ConnectorSpec(
        name=args.name or settings.connector_name,
        tables=parse_tables(tables) if tables else (),
        topic_prefix=args.topic_prefix or settings.topic_prefix,
        exclude_columns=tuple(c.strip() for c in (getattr(args, "exclude_columns", None)
                                                  or "").split(",") if c.strip()),
    )


def _connector_apply(args: argparse.Namespace) -> int:
    from cdc import connector
    from cdc.source_setup import toast_warnings

    settings, spec = _spec(args, args.tables)
    status = connector.apply(settings, spec, timeout=args.timeout,
                             replica_identity_full=args.replica_identity_full)
    for warning in toast_warnings(settings.require("postgres_dsn"), spec):
        print(f"warning: {warning}", file=sys.stderr)
    _print_json(status) if args.json else print(
        f"connector {spec.name} streaming tables {', '.join(spec.tables)} to topics "
        f"{', '.join(spec.topic(t) for t in spec.tables)}")
    return 0


def _connector_status(args: argparse.Namespace) -> int:
    from cdc import connector

    settings, spec = _spec(args)
    _print_json(connector.connector_status(settings, spec.name))
    return 0


def _connector_delete(args: argparse.Namespace) -> int:
    from cdc import connector

    settings, spec = _spec(args)
    connector.delete(settings, spec, drop_slot=args.drop_slot)
    print(f"connector {spec.name} deleted" + (" with its slot" if args.drop_slot else ""))
    return 0


def _connector_restart(args: argparse.Namespace) -> int:
    from cdc import connector

    settings, spec = _spec(args)
    _print_json(connector.restart(settings, spec, timeout=args.timeout))
    return 0


# -- parser ---------------------------------------------------------------------------

EXTRA_COMMANDS: list[Callable[[Any], None]] = []


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tidelog",
        description="Rebuildable ML models from change data capture.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    stack_p = sub.add_parser("stack", help="start, stop and inspect the local stack")
    stack_sub = stack_p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, handler, help_text in (
        ("up", _stack_up, "start Postgres, the broker, Kafka Connect and MLflow (idempotent)"),
        ("down", _stack_down, "stop exactly the processes `up` started"),
        ("status", _stack_status, "show each component and its connection string"),
    ):
        p = stack_sub.add_parser(name, help=help_text)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(handler=handler)

    conn_p = sub.add_parser("connector", help="drive the Debezium connector in Kafka Connect")
    conn_sub = conn_p.add_subparsers(dest="action", required=True, metavar="ACTION")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--name", help="connector name (default: settings.connector_name)")
        p.add_argument("--topic-prefix", help="Debezium topic.prefix (default: tidelog)")
        p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait")
        p.add_argument("--json", action="store_true", help="machine-readable output")

    p = conn_sub.add_parser("apply", help="create or update the connector and wait for streaming")
    p.add_argument("--tables", required=True, help="schema.table[,schema.table...]")
    p.add_argument("--replica-identity-full", action="store_true",
                   help="ALTER the tables to REPLICA IDENTITY FULL (full before images, "
                        "unchanged TOASTed values carried in updates)")
    p.add_argument("--exclude-columns", metavar="COLUMNS",
                   help="schema.table.column[,...] to leave out of capture (Debezium's "
                        "column.exclude.list), e.g. a column of a type tidelog refuses")
    common(p)
    p.set_defaults(handler=_connector_apply)
    p = conn_sub.add_parser("status", help="the connector's and its tasks' state")
    common(p)
    p.set_defaults(handler=_connector_status)
    p = conn_sub.add_parser("delete", help="remove the connector")
    p.add_argument("--drop-slot", action="store_true",
                   help="also drop its replication slot, publication, signalling table and DDL "
                        "refresh trigger (frees WAL)")
    common(p)
    p.set_defaults(handler=_connector_delete)
    p = conn_sub.add_parser("restart", help="restart the connector and its tasks")
    common(p)
    p.set_defaults(handler=_connector_restart)

    for register in EXTRA_COMMANDS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    _register_extras()
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except TidelogError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _register_extras() -> None:
    """Commands of the later pipeline stages register themselves here, if installed."""
    if EXTRA_COMMANDS:
        return
    import importlib

    for module in ("snapshotter.commands", "trainer.commands", "pipelines.commands",
                   "monitoring.commands", "serving.commands",
                   "api.commands", "tidelog.demo"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        EXTRA_COMMANDS.append(mod.register)


if __name__ == "__main__":
    sys.exit(main())
