"""Starting, tracking and stopping the local stack's processes, by PID only.

A record names a process by its PID and its start time (seconds after boot, from
psutil), so a PID the kernel has since handed to another process is never mistaken for
ours and never signalled. Zombies count as gone: they hold no port and take no signal.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from tidelog.errors import StackError, TidelogError
from tidelog.retry import poll

__all__ = ["ProcessRecord", "free_port", "spawn", "alive", "stop", "stop_leftovers",
           "wait_until", "tail"]

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# The kernel keeps a process's start in clock ticks since boot, so two readings of one
# process never differ by more than float rounding; a tick is the finest difference that
# can mean another process (psutil's own identity check relies on the same resolution).
_TICK = 1.0 / CLOCK_TICKS
_POLL = 0.05


@dataclass(frozen=True)
class ProcessRecord:
    name: str
    pid: int
    # Seconds from boot to the process's start (`_since_boot`); guards against PID reuse.
    # Records written before psutil hold clock ticks since boot (see `_started_as`).
    start_time: float
    log: str
    argv0: str

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _since_boot(proc: psutil.Process) -> float:
    """Seconds from boot to the process's start: the kernel's clock-tick count, which no
    wall-clock step changes. psutil's `create_time()` adds the boot time it reads now
    (`btime`, which a clock step moves), so subtracting the same reading takes it out
    again; comparing epoch seconds would lose every running process at a clock step."""
    return proc.create_time() - psutil.boot_time()


def _started_as(recorded: float, since_boot: float) -> bool:
    """Whether a process that started `since_boot` seconds after boot is the one recorded.

    Stacks started before tidelog used psutil recorded clock ticks since boot, and may
    still be running, so a record also matches in that unit. The two cannot be confused:
    a reused PID belongs to a process that started after the recorded one, never at a
    hundredth of its time. Float rounding stays within a tick, hence the tolerance. A
    start time of 0 was written when none could be read: it identifies nothing.
    """
    if recorded <= 0:
        return False
    return (abs(since_boot - recorded) <= _TICK
            or abs(since_boot - recorded / CLOCK_TICKS) <= _TICK)


def _running(proc: psutil.Process) -> bool:
    """Still this very process (psutil re-checks its start time) and not a zombie."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _process(record: ProcessRecord) -> psutil.Process | None:
    """The live process the record names, or None if it is gone or its PID was reused."""
    if record.pid <= 0:
        return None
    try:
        proc = psutil.Process(record.pid)
        since_boot = _since_boot(proc)
    except psutil.Error:
        return None
    return proc if _started_as(record.start_time, since_boot) and _running(proc) else None


def spawn(
    name: str,
    argv: Sequence[str],
    log: Path,
    *,
    env: dict[str, str] | None = None,
    user: str | None = None,
    cwd: Path | None = None,
) -> ProcessRecord:
    """Start a process in its own session, output appended to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        try:
            proc = subprocess.Popen(
                list(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=cwd,
                user=user,
                start_new_session=True,
            )
        except OSError as exc:
            raise StackError(f"{name}: cannot start {argv[0]}: {exc}", component=name) from exc
    try:
        # Our unreaped child: readable even if it has already exited.
        start = _since_boot(psutil.Process(proc.pid))
    except psutil.Error:
        start = 0.0
    return ProcessRecord(name, proc.pid, start, str(log), str(argv[0]))


def alive(record: ProcessRecord) -> bool:
    return _process(record) is not None


def _reap(pid: int) -> None:
    """Collect the exit status of a child of ours that has exited, so no zombie lingers."""
    with suppress(psutil.Error):  # running, not our child, or already reaped
        psutil.Process(pid).wait(timeout=0)


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until every process has exited; those still running after `timeout`.

    In short slices: a zombie whose parent is not us never disappears while it waits to
    be reaped, and `wait_procs` would count it as running for the whole timeout.
    """
    deadline = time.monotonic() + timeout
    left = [p for p in procs if _running(p)]
    while left and time.monotonic() < deadline:
        _, still = psutil.wait_procs(left, timeout=_POLL)  # reaps those that are ours
        left = [p for p in still if _running(p)]
    return left


def _signal(proc: psutil.Process, sig: int, group: bool) -> None:
    """Signal the process, or the process group it leads (`spawn` made it a leader)."""
    if not proc.is_running():  # the PID-reuse check psutil makes before its own signals
        raise psutil.NoSuchProcess(proc.pid)
    if group:
        try:
            os.killpg(proc.pid, sig)
            return
        except ProcessLookupError as exc:
            raise psutil.NoSuchProcess(proc.pid) from exc
        except PermissionError:
            pass  # a member we may not signal: the leader at least
    proc.send_signal(sig)


def stop(record: ProcessRecord, sig: int = signal.SIGTERM, timeout: float = 30.0,
         group: bool = True) -> None:
    """Signal the process (group) we created, then wait for the leader to exit;
    SIGKILL the group if it has not after `timeout`."""
    proc = _process(record)
    if proc is None:
        return
    try:
        _signal(proc, sig, group)
        if not _wait_gone([proc], timeout):
            return
        _signal(proc, signal.SIGKILL, group=True)
    except psutil.NoSuchProcess:
        return
    except psutil.AccessDenied as exc:
        raise StackError(f"{record.name} (pid {record.pid}): not allowed to signal it: {exc}",
                         component=record.name) from exc
    if _wait_gone([proc], timeout):
        raise StackError(f"{record.name} (pid {record.pid}) did not exit {timeout:.0f}s "
                         "after SIGKILL", component=record.name)


def _group(pgid: int) -> list[psutil.Process]:
    """The running members of a process group."""
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and _running(proc):
                members.append(proc)
        except (OSError, psutil.Error):
            continue  # exited while we looked
    return members


def stop_leftovers(record: ProcessRecord, timeout: float = 10.0) -> None:
    """SIGKILL what is left of a dead component's process group (MLflow's uvicorn
    worker outlives a killed `mlflow server` and keeps its port).

    Only when the leader is gone, or is a zombie with the recorded start time: Linux
    never hands out a PID that is still some group's id, so the group's remaining
    members are then the ones we started. Any other process with that PID means the
    PID was reused; leave it alone.
    """
    if record.pid <= 0:
        return  # never a group of ours; os.killpg(0) would be the caller's own group
    try:
        leader = psutil.Process(record.pid)
        if (leader.status() != psutil.STATUS_ZOMBIE
                or not _started_as(record.start_time, _since_boot(leader))):
            return  # running, or the PID is someone else's now
    except psutil.NoSuchProcess:
        pass  # gone and reaped: the usual case
    except psutil.Error:
        return
    deadline = time.monotonic() + timeout
    while (members := _group(record.pid)) and time.monotonic() < deadline:
        for member in members:
            with suppress(psutil.Error):  # gone meanwhile
                member.kill()
        _wait_gone(members, min(1.0, max(deadline - time.monotonic(), 0.0)))


def wait_until(
    name: str,
    check: Callable[[], bool],
    record: ProcessRecord | None,
    timeout: float,
    what: str,
) -> None:
    """Poll `check` until true; fail naming the component, the reason and its log."""
    last_error = ""

    def attempt() -> bool | None:
        nonlocal last_error
        if record is not None and not alive(record):
            _reap(record.pid)
            raise StackError(
                f"{name} exited while starting; see its log {record.log}:\n"
                f"{tail(Path(record.log))}",
                component=name,
                log=record.log,
            )
        try:
            return check() or None
        except Exception as exc:  # noqa: BLE001 - readiness probes fail in many ways
            last_error = f"{type(exc).__name__}: {exc}"
            return None

    def timed_out(_error: TidelogError | None) -> TidelogError:
        log = f"; see its log {record.log}:\n{tail(Path(record.log))}" if record else ""
        return StackError(
            f"{name} was not {what} after {timeout:.0f}s ({last_error or 'no answer'}){log}",
            component=name,
        )

    poll(attempt, timeout=timeout, interval=0.2, timed_out=timed_out)


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text[-lines:])
