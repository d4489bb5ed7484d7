"""Connectors the local stack brings back after a restart.

The local broker keeps everything in memory, Kafka Connect's own config topic included,
so a restarted broker leaves a restarted worker with no connectors. `tidelog connector
apply` records each connector's config under `$TIDELOG_HOME/connect/connectors/`, and
`stack up` re-submits any the worker lost, restarts failed tasks, and waits until every
recorded connector runs. A recorded config never holds a password: a connector whose
source needs one is not re-submitted; `stack up` names it for `connector apply`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import httpx

from tidelog.errors import StackError

__all__ = ["remember_connector", "forget_connector", "recorded_connectors",
           "restore_connectors"]

PASSWORD = "database.password"


def _directory(home: Path) -> Path:
    return home / "connect" / "connectors"


def _path(home: Path, name: str) -> Path:
    return _directory(home) / f"{name}.json"


def remember_connector(home: Path, config: dict[str, Any]) -> None:
    """Record an applied connector's config (without its password)."""
    name = str(config["name"])
    kept = {k: v for k, v in config.items() if k != PASSWORD}
    record = {"config": kept, "needs_password": bool(config.get(PASSWORD))}
    path = _path(home, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
    os.replace(tmp, path)


def forget_connector(home: Path, name: str) -> None:
    try:
        _path(home, name).unlink()
    except FileNotFoundError:
        pass


def recorded_connectors(home: Path) -> dict[str, dict[str, Any]]:
    directory = _directory(home)
    if not directory.is_dir():
        return {}
    found = {}
    for path in sorted(directory.glob("*.json")):
        record = json.loads(path.read_text())
        found[str(record["config"]["name"])] = record
    return found


def _request(method: str, url: str, **kwargs: Any) -> httpx.Response:
    try:
        return httpx.request(method, url, timeout=30, **kwargs)
    except httpx.HTTPError as exc:
        raise StackError(f"connect: the worker at {url} did not answer ({exc}); see "
                         "`tidelog stack status`", component="connect") from exc


def restore_connectors(home: Path, connect_url: str, *, resubmit: bool,
                       timeout: float = 120, grace: float = 30) -> list[str]:
    """Bring every recorded connector back to running; the names re-submitted.

    With `resubmit` (the broker restarted, so the worker's config topic is new) a
    connector the worker lacks is re-submitted at once; otherwise the worker gets
    `grace` seconds to read its config topic first. Failed tasks get one restart.
    """
    records = recorded_connectors(home)
    if not records:
        return []
    url = connect_url.rstrip("/")
    patience = time.monotonic() + (0 if resubmit else grace)
    while True:
        missing = [n for n in records if n not in _listed(url, timeout)]
        if not missing or time.monotonic() >= patience:
            break
        time.sleep(0.5)
    for name in missing:
        record = records[name]
        if record["needs_password"]:
            raise StackError(
                f"connect: the worker lost connector {name}, whose source needs a password "
                f"tidelog does not keep; run `tidelog connector apply --name {name} ...` "
                "again", component="connect", connector=name)
        config = {**record["config"], PASSWORD: ""}
        resp = _request("PUT", f"{url}/connectors/{name}/config", json=config)
        if resp.status_code not in (200, 201):
            raise StackError(f"connect: re-submitting connector {name} failed: HTTP "
                             f"{resp.status_code} {resp.text}", component="connect",
                             connector=name)
    _wait_running(url, list(records), timeout)
    return missing


def _listed(url: str, timeout: float) -> set[str]:
    """The worker's connectors, once it answers (it may be mid-rebalance: HTTP 409)."""
    deadline = time.monotonic() + timeout
    while True:
        resp = _request("GET", f"{url}/connectors")
        if resp.status_code == 200 and isinstance(resp.json(), list):
            return {str(n) for n in resp.json()}
        if time.monotonic() >= deadline:
            raise StackError(f"connect: the worker at {url} does not list its connectors "
                             f"(HTTP {resp.status_code} {resp.text[:300]})",
                             component="connect")
        time.sleep(0.5)


def _wait_running(url: str, names: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = list(names)
    restarted: set[str] = set()
    last: dict[str, Any] = {}
    while pending and time.monotonic() < deadline:
        for name in list(pending):
            resp = _request("GET", f"{url}/connectors/{name}/status")
            if resp.status_code != 200:
                continue  # not yet assigned after a rebalance
            last = resp.json()
            tasks = last.get("tasks", [])
            failed = [t for t in tasks if t.get("state") == "FAILED"]
            if (failed or last.get("connector", {}).get("state") == "FAILED") \
                    and name not in restarted:
                # a task that died with its source (Postgres restarted) gets one restart
                _request("POST", f"{url}/connectors/{name}/restart",
                         params={"includeTasks": "true", "onlyFailed": "true"})
                restarted.add(name)
            elif tasks and all(t.get("state") == "RUNNING" for t in tasks):
                pending.remove(name)
        if pending:
            time.sleep(0.5)
    if pending:
        raise StackError(
            f"connect: connector {pending[0]} was not running {timeout:.0f}s after `stack up` "
            f"(last status: {json.dumps(last)[:800]}); see the worker's log, then "
            f"`tidelog connector restart --name {pending[0]}`", component="connect",
            connector=pending[0])
