"""The local stack: Postgres, a Kafka-protocol broker, Kafka Connect + Debezium, MLflow.

`up` is idempotent and starts only what is not already running; `down` stops exactly the
processes `up` started, by PID, and waits for them to exit. State lives in
`$TIDELOG_HOME/stack.json`; each component logs to `$TIDELOG_HOME/<component>/`.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from tidelog.stack.broker import start_broker
from tidelog.stack.connect import start_connect
from tidelog.stack.connectors import restore_connectors
from tidelog.stack.mlflow_server import start_mlflow
from tidelog.stack.postgres import postgres_dsn, start_postgres
from tidelog.stack.process import ProcessRecord, alive, free_port, stop, stop_leftovers

__all__ = ["COMPONENTS", "StackStatus", "up", "down", "status"]

COMPONENTS = ("postgres", "broker", "connect", "mlflow")
STOP_SIGNALS = {"postgres": signal.SIGINT}  # SIGINT is Postgres's "fast" shutdown


@dataclass(frozen=True)
class StackStatus:
    home: Path
    components: dict[str, dict[str, object]]
    endpoints: dict[str, str]

    @property
    def running(self) -> bool:
        return all(c["state"] == "running" for c in self.components.values())

    def to_json(self) -> dict[str, object]:
        return {"home": str(self.home), "running": self.running,
                "components": self.components, "endpoints": self.endpoints}


class _StackState(TypedDict, total=False):
    """stack.json: what `up` started, on which ports, and the settings it leads to."""

    components: dict[str, dict[str, Any]]  # ProcessRecord.to_json() by component
    ports: dict[str, int]
    endpoints: dict[str, str]


def _state_path(home: Path) -> Path:
    return home / "stack.json"


def _load(home: Path) -> _StackState:
    path = _state_path(home)
    if not path.exists():
        return {"components": {}, "ports": {}, "endpoints": {}}
    return json.loads(path.read_text())


def _save(home: Path, state: _StackState) -> None:
    path = _state_path(home)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    os.replace(tmp, path)


@contextmanager
def _locked(home: Path) -> Iterator[None]:
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "stack.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _record(state: _StackState, name: str) -> ProcessRecord | None:
    raw = state["components"].get(name)
    return ProcessRecord(**raw) if raw else None


def _running(state: _StackState, name: str) -> bool:
    record = _record(state, name)
    if record is not None and not alive(record):
        stop_leftovers(record)  # a dead leader's children must not hold its port
        return False
    return record is not None


def _port(state: _StackState, name: str) -> int:
    ports = state.setdefault("ports", {})
    if name not in ports:
        ports[name] = free_port()
    return ports[name]


def up(home: Path) -> StackStatus:
    """Start whatever is not running, then bring back every recorded connector.

    A restarted broker is a new, empty cluster: Connect is stopped before it starts (a
    worker reconnecting to it would auto-create its own topics with the broker's default
    partition count), its internal topics are created, and the connectors the new worker
    lacks are re-submitted from tidelog's records (tidelog/stack/connectors.py).
    """
    with _locked(home):
        state = _load(home)
        components = state.setdefault("components", {})
        endpoints = state.setdefault("endpoints", {})
        started: list[str] = []

        def keep(name: str, record: ProcessRecord) -> None:
            components[name] = record.to_json()
            started.append(name)
            _save(home, state)

        if not _running(state, "postgres"):
            port = _port(state, "postgres")
            endpoints["postgres_dsn"] = postgres_dsn(port)
            keep("postgres", start_postgres(home / "postgres", port))
        broker_restarted = not _running(state, "broker")
        if broker_restarted and _running(state, "connect"):
            old = _record(state, "connect")
            assert old is not None
            stop(old, timeout=10)  # its state lived in the lost broker; nothing to flush
        if broker_restarted:
            record, bootstrap = start_broker(home / "broker", _port(state, "broker"))
            endpoints["bootstrap_servers"] = bootstrap
            keep("broker", record)
        if not _running(state, "connect"):
            port = _port(state, "connect")
            endpoints["connect_url"] = f"http://127.0.0.1:{port}"
            keep("connect", start_connect(home / "connect", home / "cache", port,
                                          endpoints["bootstrap_servers"]))
        if not _running(state, "mlflow"):
            port = _port(state, "mlflow")
            endpoints["mlflow_uri"] = f"http://127.0.0.1:{port}"
            record, _ = start_mlflow(home / "mlflow", port)
            keep("mlflow", record)
        _save(home, state)
        if started:
            restore_connectors(home, endpoints["connect_url"], resubmit=broker_restarted)
    return status(home)


def down(home: Path) -> StackStatus:
    """Stop, in reverse dependency order, exactly the processes recorded by `up`."""
    with _locked(home):
        state = _load(home)
        for name in reversed(COMPONENTS):
            record = _record(state, name)
            if record is not None:
                # Postgres's postmaster shuts its own children down; others get the group.
                stop(record, STOP_SIGNALS.get(name, signal.SIGTERM), group=name != "postgres")
                state["components"].pop(name)
                _save(home, state)
        state["endpoints"] = {}
        _save(home, state)
    return status(home)


def status(home: Path) -> StackStatus:
    state = _load(home)
    components: dict[str, dict[str, object]] = {}
    for name in COMPONENTS:
        record = _record(state, name)
        if record is None:
            components[name] = {"state": "stopped"}
        else:
            components[name] = {
                "state": "running" if alive(record) else "dead",
                "pid": record.pid,
                "log": record.log,
                "port": state.get("ports", {}).get(name),
            }
    endpoints = dict(state.get("endpoints", {}))
    return StackStatus(home=home, components=components, endpoints=endpoints)
