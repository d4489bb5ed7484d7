"""Starting, tracking and stopping the local stack's processes, by PID only."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tidelog.errors import StackError, TidelogError
from tidelog.retry import poll

__all__ = ["ProcessRecord", "free_port", "spawn", "alive", "stop", "stop_leftovers",
           "wait_until", "tail"]


@dataclass(frozen=True)
class ProcessRecord:
    name: str
    pid: int
    start_time: float  # /proc start time in clock ticks, guards against PID reuse
    log: str
    argv0: str

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _proc_start_time(pid: int) -> float | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses; fields follow the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return float(fields[19])


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
    start = _proc_start_time(proc.pid) or 0.0
    return ProcessRecord(name, proc.pid, start, str(log), str(argv[0]))


def alive(record: ProcessRecord) -> bool:
    start = _proc_start_time(record.pid)
    return start is not None and (record.start_time == 0.0 or start == record.start_time)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop(record: ProcessRecord, sig: int = signal.SIGTERM, timeout: float = 30.0,
         group: bool = True) -> None:
    """Signal the process (group) we created, then wait for the leader to exit."""
    if not alive(record):
        return
    try:
        if group:
            os.killpg(record.pid, sig)
        else:
            os.kill(record.pid, sig)
    except ProcessLookupError:
        return
    except PermissionError:
        os.kill(record.pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(record.pid)
        if not alive(record):
            return
        time.sleep(0.05)
    try:
        os.killpg(record.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    while alive(record):
        _reap(record.pid)
        time.sleep(0.05)


def stop_leftovers(record: ProcessRecord, timeout: float = 10.0) -> None:
    """SIGKILL what is left of a dead component's process group (MLflow's uvicorn
    worker outlives a killed `mlflow server` and keeps its port).

    Only when no process has the leader's PID: Linux never hands out a PID that is
    still some group's id, so the group's remaining members are then the ones we
    started. A live process with that PID means the PID was reused; leave it alone.
    """
    if alive(record) or _proc_start_time(record.pid) is not None:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(record.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return  # the group is empty
        time.sleep(0.05)


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
        if record is not None:
            _reap(record.pid)
            if not alive(record):
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
