"""`tidelog stack up | status | up | down` on a home of its own; nothing left running."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import stack_dir
from tidelog.settings import Settings

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


def _group_members(pgid: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members


def _kill_component(home: Path, name: str) -> int:
    """SIGKILL a component's leader by the PID the stack recorded (its children live on,
    as after an OOM kill), wait until it is gone; its PID, which is its group id."""
    status = json.loads(_tidelog(home, "stack", "status", "--json").stdout)
    pid = status["components"][name]["pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while _alive(pid):
        assert time.monotonic() < deadline, f"{name} (pid {pid}) survived SIGKILL"
        time.sleep(0.1)
    return int(pid)


def test_killed_broker_or_worker_then_stack_up_brings_cdc_back() -> None:
    """After any component dies, `stack up` gives a streaming connector again. The local
    broker keeps everything in memory: after it dies the worker's internal topics must be
    right and its connector re-submitted, and the archive must take the new log as a new
    generation, never mixing it with the old."""
    from cdc.connector import ConnectorSpec, apply, connector_status
    from snapshotter.archive import Archive
    from snapshotter.archiving import archive_topics
    from snapshotter.snapshots import create_snapshot, rebuild_snapshot
    from tests.integration.cdc_helpers import execute, wait_for_events
    from tidelog.settings import load_settings

    table = "public.restart_rows"
    with stack_dir() as home:
        first = _tidelog(home, "stack", "up", "--json")
        assert first.returncode == 0, first.stderr
        try:
            settings = dataclasses.replace(
                load_settings(home), topic_prefix="rst", connector_name="rst",
                archive_root=str(home / "archive"), snapshot_root=str(home / "snapshots"))
            topic = f"rst.{table}"
            execute(settings, f"create table {table} (id serial primary key, v text)",
                    f"insert into {table} (v) values ('before')")
            apply(settings, ConnectorSpec("rst", (table,), "rst"), timeout=180)
            wait_for_events(settings, topic, lambda ev: any(
                e.after and e.after.get("v") == "before" for e in ev), timeout=120)
            archive_topics(settings, [topic])
            old = create_snapshot(settings, [table])

            kills = ["broker", "broker", "broker", "connect", "postgres", "mlflow"]
            for attempt, component in enumerate(kills):
                group = _kill_component(home, component)
                again = _tidelog(home, "stack", "up", "--json")
                assert again.returncode == 0, again.stderr
                assert not _group_members(group), f"{component}'s children outlived `up`"
                state = connector_status(settings, "rst")
                assert [t["state"] for t in state["tasks"]] == ["RUNNING"], state
                marker = f"after-{attempt}-{component}"
                execute(settings, f"insert into {table} (v) values (%s)", params=(marker,))
                wait_for_events(settings, topic, lambda ev, m=marker: any(
                    e.after and e.after.get("v") == m for e in ev), timeout=120)
                archive_topics(settings, [topic])

            # three broker restarts: three more logs, each its own generation
            generations = Archive(settings.archive_root).generations(topic, 0)
            assert len(generations) == 4
            assert len({g.cluster_id for g in generations}) == 4
            new = create_snapshot(settings, [table])
            values = sorted(str(r["v"]) for r in _rows(settings, new.id, table))
            assert values == sorted(["before", *(f"after-{i}-{c}" for i, c in enumerate(kills))])
            # the cut taken on the first log is still served, from its own generation
            rebuilt = rebuild_snapshot(settings, old.cut, [table], home / "rebuilt")
            assert rebuilt.digest == old.digest
        finally:
            down = _tidelog(home, "stack", "down", "--json")
            assert down.returncode == 0, down.stderr


def _rows(settings: Settings, snapshot_id: str, table: str) -> list[dict[str, object]]:
    from snapshotter.snapshots import open_snapshot

    return open_snapshot(settings, snapshot_id).table(table).to_dicts()
