"""`tidelog stack up | status | up | down` on a home of its own; nothing left running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import stack_dir

pytestmark = pytest.mark.integration


def _tidelog(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TIDELOG_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "tidelog.cli", *args], env=env,
                          capture_output=True, text=True, timeout=300)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_up_status_up_down() -> None:
    with stack_dir() as home:
        _lifecycle(home)


def _lifecycle(home: Path) -> None:
    first = _tidelog(home, "stack", "up", "--json")
    assert first.returncode == 0, first.stderr
    try:
        status = json.loads(_tidelog(home, "stack", "status", "--json").stdout)
        assert status["running"] is True
        pids = {n: c["pid"] for n, c in status["components"].items()}
        assert set(pids) == {"postgres", "broker", "connect", "mlflow"}
        assert all(_alive(p) for p in pids.values())
        endpoints = status["endpoints"]
        assert endpoints["postgres_dsn"].startswith("postgresql://postgres@127.0.0.1:")
        assert endpoints["bootstrap_servers"].startswith("127.0.0.1:")
        assert endpoints["connect_url"].startswith("http://127.0.0.1:")
        assert endpoints["mlflow_uri"].startswith("http://127.0.0.1:")
        for name in pids:
            assert Path(status["components"][name]["log"]).exists()

        again = _tidelog(home, "stack", "up", "--json")
        assert again.returncode == 0, again.stderr
        again_pids = {n: c["pid"] for n, c in json.loads(again.stdout)["components"].items()}
        assert again_pids == pids, "a second `up` must not restart anything"
    finally:
        down = _tidelog(home, "stack", "down", "--json")
    assert down.returncode == 0, down.stderr
    assert not any(_alive(p) for p in pids.values()), "`down` left a process running"
    after = json.loads(_tidelog(home, "stack", "status", "--json").stdout)
    assert all(c["state"] == "stopped" for c in after["components"].values())
    assert _tidelog(home, "stack", "status").returncode == 3
