"""The local stack's processes: started, found alive, stopped, by PID and start time only,
on real short-lived children."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from tidelog.stack import process
from tidelog.stack.process import ProcessRecord, alive, spawn, stop, stop_leftovers

Spawn = Callable[..., ProcessRecord]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Spawn]:
    """`spawn` for a test; whatever it started and left running is killed afterwards."""
    started: list[ProcessRecord] = []

    def run(argv: list[str], name: str = "demo") -> ProcessRecord:
        record = spawn(name, argv, tmp_path / f"{name}.log")
        started.append(record)
        return record

    yield run
    for record in started:
        if alive(record):
            os.killpg(record.pid, signal.SIGKILL)
        _reap(record.pid)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def _child_of(tmp_path: Path) -> int:
    """The PID a `sleep 300 & echo $! > child` leader wrote."""
    marker = tmp_path / "child"
    _wait(lambda: marker.exists() and marker.read_text().strip() != "", "no child PID")
    return int(marker.read_text())


def _legacy_ticks(pid: int) -> float:
    """The start time the code before psutil recorded: /proc's clock ticks since boot."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return float(stat[stat.rindex(")") + 2:].split()[19])


def test_spawn_records_the_start_after_boot_and_stop_ends_the_group(
        start: Spawn, tmp_path: Path) -> None:
    record = start(["sh", "-c", f"sleep 300 & echo $! > {tmp_path}/child; wait"])
    created = psutil.Process(record.pid).create_time()
    assert abs(record.start_time - (created - psutil.boot_time())) < 1e-6
    assert 0 < record.start_time <= time.time() - psutil.boot_time()
    assert alive(record)
    child = _child_of(tmp_path)
    stop(record, timeout=10)
    assert not alive(record)
    _wait(lambda: _gone(child), "the leader's child outlived stop")
    with pytest.raises(psutil.NoSuchProcess):
        psutil.Process(record.pid)  # reaped, not left a zombie
    stop(record)  # stopping what is already stopped is a no-op


def test_stop_escalates_to_sigkill_after_the_timeout(start: Spawn) -> None:
    record = start(["sh", "-c", "trap '' TERM; sleep 300"])
    _wait(lambda: psutil.Process(record.pid).children() != [], "sleep did not start")
    began = time.monotonic()
    stop(record, timeout=0.5)
    assert not alive(record)
    assert time.monotonic() - began < 10


def test_stop_without_group_signals_the_leader_only(start: Spawn, tmp_path: Path) -> None:
    record = start(["sh", "-c", f"sleep 300 & echo $! > {tmp_path}/child; wait"])
    child = _child_of(tmp_path)
    # sh leaves `wait` on SIGINT and exits; its child, not signalled, keeps running
    stop(record, signal.SIGINT, timeout=10, group=False)
    assert not alive(record)
    assert not _gone(child)
    os.kill(child, signal.SIGKILL)


def test_a_zombie_is_not_alive(start: Spawn) -> None:
    # still running when spawn drops its Popen (which would reap a child already exited)
    record = start(["sleep", "0.3"])
    _wait(lambda: psutil.Process(record.pid).status() == psutil.STATUS_ZOMBIE,
          "sleep did not exit")
    assert not alive(record)
    stop(record)  # nothing to signal


def test_a_reused_pid_is_not_alive_and_never_signalled(start: Spawn, tmp_path: Path) -> None:
    record = start(["sh", "-c", f"sleep 300 & echo $! > {tmp_path}/child; wait"])
    child = _child_of(tmp_path)
    # what a record of an earlier process that had this PID looks like, in either unit
    for start_time in (record.start_time - 5, record.start_time + 0.05,
                       _legacy_ticks(record.pid) - 3, 0.0):
        other = dataclasses.replace(record, start_time=start_time)
        assert not alive(other), start_time
        stop(other, timeout=1)
        stop_leftovers(other)
        assert alive(record) and not _gone(child), start_time
    stop(record, timeout=10)


def test_a_record_written_before_psutil_still_names_its_process(start: Spawn) -> None:
    record = start(["sleep", "300"])
    legacy = dataclasses.replace(record, start_time=_legacy_ticks(record.pid))
    assert legacy.start_time < 1e9
    assert alive(legacy)
    stop(legacy, timeout=10)
    assert not alive(record)


def test_start_times_match_in_either_unit_within_a_tick() -> None:
    tick = 1.0 / process.CLOCK_TICKS
    since_boot = 12_345 * tick
    assert process._started_as(since_boot, since_boot)  # seconds since boot
    assert process._started_as(12_345, since_boot)  # ticks since boot, as before psutil
    assert process._started_as(12_346, since_boot)  # float rounding stays within a tick
    assert not process._started_as(12_347, since_boot)
    assert not process._started_as(since_boot + 2 * tick, since_boot)
    assert not process._started_as(0.0, since_boot)
    # after ~250 days of uptime, both units still tell the process
    ticks = 250 * 86_400 * process.CLOCK_TICKS
    assert process._started_as(ticks, ticks * tick)
    assert process._started_as(ticks * tick, ticks * tick)


def test_a_wall_clock_step_keeps_every_record(start: Spawn,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    record = start(["sleep", "300"])
    real_boot, real_created = psutil.boot_time, psutil.Process.create_time
    # A clock step moves the boot time the kernel reports, and so psutil's create_time().
    monkeypatch.setattr(psutil, "boot_time", lambda: real_boot() + 3600.0)
    monkeypatch.setattr(psutil.Process, "create_time",
                        lambda self: real_created(self) + 3600.0)
    assert alive(record)
    stop(record, timeout=10)
    assert not alive(record)


def test_stop_leftovers_kills_a_dead_leaders_children_only(
        start: Spawn, tmp_path: Path) -> None:
    # a leader whose child outlives it, as MLflow's uvicorn worker does
    record = start(["sh", "-c", f"sleep 300 & echo $! > {tmp_path}/child; wait"])
    child = _child_of(tmp_path)
    stop_leftovers(record)  # the leader is alive: nothing happens
    assert alive(record) and not _gone(child)
    os.kill(record.pid, signal.SIGKILL)
    os.waitpid(record.pid, 0)
    assert not _gone(child)
    stop_leftovers(record)
    _wait(lambda: _gone(child), "the dead leader's child survived")


def test_stop_leftovers_also_when_the_dead_leader_is_an_unreaped_zombie(
        start: Spawn, tmp_path: Path) -> None:
    record = start(["sh", "-c", f"sleep 300 & echo $! > {tmp_path}/child; wait"])
    child = _child_of(tmp_path)
    os.kill(record.pid, signal.SIGKILL)
    _wait(lambda: _gone(record.pid), "the leader survived SIGKILL")
    assert psutil.Process(record.pid).status() == psutil.STATUS_ZOMBIE
    assert not alive(record) and not _gone(child)
    stop_leftovers(record)
    _wait(lambda: _gone(child), "the zombie leader's child survived")
