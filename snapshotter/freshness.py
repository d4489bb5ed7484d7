"""Is capture current? The check behind every `--at latest` cut.

A cut called "latest" must hold every change committed before it was asked for. Three
things can make the archive's newest cut older than the source, and each is checked:

1. the connector or one of its tasks is not RUNNING (a FAILED task after a
   RecordTooLargeException or a record Debezium cannot parse), or a table is not in its
   running configuration, or it is still snapshotting (initial or incremental);
2. the replication slot has not confirmed the WAL written before the check began
   (Debezium stuck retrying, or lagging): a bounded wait, never an equality test;
3. a partition of a chosen table (or the transaction topic) is stopped at an event the
   archiver cannot decode (`archive status` shows it);
4. an array column has lost the CHECK constraint `connector apply` required
   (docs/types.md, "Arrays"): arrays written since may have arrived changed.

`--allow-stale` takes the cut anyway; the reasons are then recorded in the cut
(`stale_allowed`), so the manifest and every training run built on it say so.
"""

from __future__ import annotations

from collections.abc import Sequence

from cdc.capture import capture_problems
from cdc.connector import ConnectorSpec, current_excluded_columns
from cdc.source_types import unguarded_arrays
from snapshotter.archive import Archive
from tidelog.adapters.connect import KafkaConnect
from tidelog.errors import CaptureStale
from tidelog.settings import Settings

__all__ = ["CAPTURE_WAIT", "source_problems", "archive_problems", "refuse_if_stale"]

# Seconds the slot may take to confirm the WAL written before the check: Debezium commits
# offsets (and so confirms the slot) about once a second while it keeps up.
CAPTURE_WAIT = 15.0


def source_problems(settings: Settings, tables: Sequence[str], wait: float = CAPTURE_WAIT
                    ) -> list[str]:
    spec = ConnectorSpec(settings.connector_name, tuple(tables), settings.topic_prefix)
    problems = capture_problems(settings, spec, wait)
    if problems:
        return problems
    excluded = current_excluded_columns(KafkaConnect.for_settings(settings), spec.name)
    return [f"{r}; the constraint was there at `connector apply`: arrays written since it "
            "went may be in the archive changed, so fix them at the source once it is back"
            for r in unguarded_arrays(settings.require("postgres_dsn"), tables, excluded)]


def archive_problems(archive: Archive, topics: Sequence[str]) -> list[str]:
    chosen = set(topics)
    return [f"archiving stopped at {f.describe()}" for f in archive.failures()
            if f.topic in chosen]


def refuse_if_stale(problems: Sequence[str], tables: Sequence[str], allow_stale: bool
                    ) -> tuple[str, ...]:
    """The problems to record when a stale cut is allowed; raise CaptureStale otherwise."""
    if not problems or allow_stale:
        return tuple(problems)
    raise CaptureStale(
        f"refusing a 'latest' cut of {', '.join(tables)}: capture is not current: "
        + "; ".join(problems)
        + ". Fix the cause and retry, pass an explicit cut, or pass --allow-stale "
        "(API: \"allow_stale\": true) to take the newest archived cut anyway; the cut then "
        "records why it was stale", problems=list(problems), tables=list(tables))
