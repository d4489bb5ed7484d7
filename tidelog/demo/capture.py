"""Waiting for the connector: archive until every table's topic holds the change events
the database work implies."""

from __future__ import annotations

from typing import Any

from tidelog.errors import ConnectorFailed, TidelogError
from tidelog.retry import poll
from tidelog.settings import Settings
from tidelog.topics import table_topic

__all__ = ["wait_for_capture"]


def wait_for_capture(settings: Settings, expected: dict[str, int], timeout: float = 120,
                     interval: float = 0.3) -> Any:
    """Archive until every table's topic holds its expected number of change events,
    whole transactions only; return that cut (a `snapshotter.cut.Cut`).

    Each poll archives what is new, so a long capture polled often leaves many small
    segments: poll less often (`interval`) for big loads."""

    from snapshotter.snapshots import resolve_cut

    tables = sorted(expected)
    have: dict[str, int] = {}
    last_error = ""

    def attempt() -> Any:
        nonlocal last_error
        try:
            cut = resolve_cut(settings, tables, "latest")
        except TidelogError as exc:
            last_error = f"; last error: {exc.message}"  # e.g. topics not created yet
            return None
        last_error = ""
        have.update({t: sum(p.end - p.start for p in cut.partitions
                            if p.topic == table_topic(settings.topic_prefix, t))
                     for t in tables})
        return cut if all(have[t] >= expected[t] for t in tables) else None

    def timed_out(_error: TidelogError | None) -> TidelogError:
        behind = ", ".join(f"{t} {have.get(t, 0)}/{expected[t]}" for t in tables)
        return ConnectorFailed(
            f"the connector had not delivered every change after {timeout:.0f}s "
            f"(events archived/expected: {behind}){last_error}; check the Kafka "
            "Connect log (`tidelog stack status` shows where it is)")

    return poll(attempt, timeout=timeout, interval=interval, timed_out=timed_out)
