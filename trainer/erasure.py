"""`tidelog erase`: remove one subject from every store tidelog keeps, keep the proofs,
flag the models that saw it, and record it in the erasure ledger (docs/erasure.md).

The storage part is snapshotter/erasure.py; this adds the runs and model versions (MLflow,
through trainer/tracking.py) and the ledger. One erasure at a time per $TIDELOG_HOME; every
call first completes any erasure a crash interrupted (its journal is still pending).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snapshotter.catalog import sync_catalog
from snapshotter.digest import ContentSum
from snapshotter.erasure import (
    ErasureFiles,
    Journal,
    SegmentHit,
    Subject,
    erase_segments,
    erase_snapshots,
    find_segments,
    find_snapshots,
    new_erasure_id,
    subject_sum_at,
)
from snapshotter.erasure_ledger import ErasureLedger, LedgerCheck
from snapshotter.mirror import fetch_holding, sync_or_raise
from tidelog.crashpoints import crash_point
from tidelog.errors import ErasureError, TidelogError
from tidelog.redact import redact_dsn
from tidelog.settings import Settings
from tidelog.topics import table_topic
from trainer.datasets import dataset_cache_dir
from trainer.tracking import Tracking, connect

__all__ = ["ErasureReport", "ErasureListing", "erase", "list_erasures", "verify_ledger",
           "erasures_of_run", "cannot_erase", "erasure_tag", "erased_sums", "key_from_text",
           "AFFECTED", "REBUILT_WITHOUT"]

AFFECTED = "affected"
REBUILT_WITHOUT = "rebuilt-without"  # on the run `rebuild --without-erased` logs


def erasure_tag(erasure_id: str) -> str:
    """The MLflow tag a run or model version that saw an erased subject carries."""
    return f"tidelog.erasure.{erasure_id}"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def cannot_erase(settings: Settings, table: str) -> dict[str, Any]:
    """What tidelog cannot erase itself, and how its operator erases it there."""
    topic = table_topic(settings.topic_prefix, table)
    return {
        "source_database": {
            "where": f"{redact_dsn(settings.postgres_dsn) or 'the source Postgres'}, "
                     f"table {table}",
            "how": f"DELETE the subject's rows from {table} in Postgres: Debezium then "
                   "writes a delete event and a tombstone for the key",
        },
        "kafka_topics": {
            "where": [topic, f"{settings.topic_prefix}.transaction (no row values)"],
            "how": f"with cleanup.policy=compact on {topic}, log compaction drops every "
                   "earlier event of the key once the tombstone is written and "
                   "delete.retention.ms has passed; otherwise the events stay until the "
                   "topic's retention.ms/retention.bytes expires them (or recreate the "
                   "topic). tidelog never writes to these topics",
        },
        "model_artifacts": {
            "where": "the models and input examples of the flagged MLflow runs",
            "how": "a model may have memorised the subject; retrain with `tidelog rebuild "
                   "RUN --without-erased` and retire the flagged versions",
        },
    }


@dataclass(frozen=True)
class ErasureReport:
    erasure_id: str | None
    table: str
    dry_run: bool
    segments: list[str]
    snapshots: dict[str, dict[str, Any]]
    runs: dict[str, dict[str, Any]]
    model_versions: list[dict[str, str]]
    cannot_erase: dict[str, Any]
    resumed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"erasure_id": self.erasure_id, "table": self.table, "dry_run": self.dry_run,
                "segments": self.segments, "snapshots": self.snapshots, "runs": self.runs,
                "model_versions": self.model_versions, "cannot_erase": self.cannot_erase,
                "resumed": self.resumed, "notes": self.notes}


def _tracking(settings: Settings, experiment: str | None) -> Tracking | None:
    if not settings.mlflow_uri:
        return None
    return connect(settings, experiment) if experiment else connect(settings)


def _affected_runs(settings: Settings, tracking: Tracking, subject: Subject,
                   hits: list[SegmentHit], snapshots: Mapping[str, dict[str, Any]]
                   ) -> dict[str, dict[str, Any]]:
    """Runs whose dataset held a row of the subject, and that row's content sum."""
    runs: dict[str, dict[str, Any]] = {}
    scratch = Path(tempfile.mkdtemp(prefix="tidelog-erasure-"))
    try:
        for run in tracking.runs_with_table(subject.table):
            run_id = str(run.info.run_id)
            try:
                lineage = tracking.lineage(run_id)
            except TidelogError:
                continue  # not a rebuildable tidelog run: nothing of it is derived here
            found = snapshots.get(lineage.snapshot_id)
            if found is not None:
                if not found["rows"]:
                    continue
                rows, content = int(found["rows"]), found["content_digest"]
            else:
                total = subject_sum_at(settings, subject, hits, lineage.cut, None, scratch)
                if total is None:
                    continue
                rows, content = total.rows, total.hex
            runs[run_id] = {"snapshot_id": lineage.snapshot_id, "table": subject.table,
                            "rows": rows, "content_digest": content}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return runs


def _plan(settings: Settings, subject: Subject, tracking: Tracking | None
          ) -> tuple[list[str], dict[str, dict[str, Any]], dict[str, dict[str, Any]],
                     list[dict[str, str]]]:
    hits = find_segments(settings, subject)
    snapshots = {h.snapshot_id: h.to_json() for h in find_snapshots(settings, subject)}
    runs: dict[str, dict[str, Any]] = {}
    versions: list[dict[str, str]] = []
    if tracking is not None:
        runs = _affected_runs(settings, tracking, subject, hits, snapshots)
        for run_id in runs:
            versions.extend({"name": name, "version": version, "run_id": run_id}
                            for name, version in tracking.versions_of_run(run_id))
    return [h.describe() for h in hits], snapshots, runs, versions


def _execute(settings: Settings, journal: Journal, files: ErasureFiles,
             tracking: Tracking | None) -> dict[str, Any]:
    """Carry out (or finish) a journaled erasure; its ledger entry."""
    subject = journal.subject

    def step(name: str) -> bool:
        return name not in journal.done

    def mark(name: str) -> None:
        journal.done.append(name)
        files.save(journal)

    if step("segments"):
        erase_segments(settings, subject)
        mark("segments")
    if step("snapshots"):
        erase_snapshots(settings, journal.id, subject)
        mark("snapshots")
    if step("remote"):
        # The S3 snapshot root (if any): rewritten copies up, the erased files deleted.
        sync_or_raise(settings, f"erasure {journal.id} is done here")
        mark("remote")
    if step("caches"):
        # Datasets rebuilt from the archive for MLflow's `load()`: derived, so removed
        # whole rather than rewritten; the next load rebuilds from the erased archive.
        shutil.rmtree(dataset_cache_dir(settings), ignore_errors=True)
        mark("caches")
    crash_point("erasure.before_catalog")
    if step("catalog"):
        sync_catalog(settings, rebuild=True)  # its views name the rewritten files by path
        mark("catalog")
    if step("mlflow") and (journal.runs or journal.model_versions):
        if tracking is None:
            raise ErasureError(
                f"erasure {journal.id} must flag MLflow runs {sorted(journal.runs)} but "
                "TIDELOG_MLFLOW_URI is not set; set it and run `tidelog erase` again to "
                "finish", erasure_id=journal.id)
        for run_id in journal.runs:
            tracking.set_run_tag(run_id, erasure_tag(journal.id), AFFECTED)
        for version in journal.model_versions:
            tracking.set_model_version_tag(version["name"], version["version"],
                                           erasure_tag(journal.id), AFFECTED)
        mark("mlflow")
    crash_point("erasure.before_ledger")
    ledger = ErasureLedger(files)
    entry = ledger.find(journal.id)
    if entry is None:
        entry = ledger.append({
            "id": journal.id, "table": subject.table,
            "subject": ledger.subject_hash(subject.table, subject.key_json),
            "requested_at": journal.requested_at, "completed_at": _now(),
            "actor": journal.actor, "reason": journal.reason,
            "segments": journal.segments, "snapshots": journal.snapshots,
            "runs": journal.runs, "model_versions": journal.model_versions,
            "cannot_erase": cannot_erase(settings, subject.table)})
    crash_point("erasure.before_journal_removed")
    files.remove(journal)  # the last copy of the raw key
    return entry


def erase(settings: Settings, table: str, key: Mapping[str, Any], reason: str, actor: str,
          *, dry_run: bool = False, experiment: str | None = None) -> ErasureReport:
    """Erase the subject (`table`, `key`) everywhere tidelog keeps it; `dry_run` only
    reports what would change."""
    if not reason.strip():
        raise ErasureError("an erasure needs a reason (--reason), for the ledger")
    subject = Subject(table, dict(key))
    files = ErasureFiles(Path(settings.home))
    tracking = _tracking(settings, experiment)
    notes = [] if tracking is not None else [
        "TIDELOG_MLFLOW_URI is not set: no runs or model versions were checked"]
    with files.exclusive():
        resumed = []
        if not dry_run:
            for pending in files.journals():
                _execute(settings, pending, files, tracking)
                resumed.append(pending.id)
        # Snapshots only the S3 snapshot root holds are erased too: fetched here first.
        if fetched := fetch_holding(settings, table):
            notes.append(f"fetched {len(fetched)} snapshot(s) of {table} that only the "
                         f"snapshot root held: {', '.join(fetched)}")
        segments, snapshots, runs, versions = _plan(settings, subject, tracking)
        report_args: dict[str, Any] = {"table": table, "segments": segments, "snapshots": snapshots,
                       "runs": runs, "model_versions": versions,
                       "cannot_erase": cannot_erase(settings, table), "resumed": resumed}
        if not (segments or snapshots):
            ledger = ErasureLedger(files)
            hashed = ledger.subject_hash(table, subject.key_json)
            earlier = [e["id"] for e in ledger.entries() if e.get("subject") == hashed]
            notes.append(f"already erased by {', '.join(earlier)}" if earlier else
                         f"no change event of {table} has the key {subject.key_json} (keys "
                         "are compared as Debezium writes them: column names and JSON "
                         "value types must match)")
            return ErasureReport(erasure_id=earlier[-1] if earlier else None,
                                 dry_run=dry_run, notes=notes, **report_args)
        if dry_run:
            return ErasureReport(erasure_id=None, dry_run=True, notes=notes, **report_args)
        journal = Journal(id=new_erasure_id(), table=table, key=dict(key), reason=reason,
                          actor=actor, requested_at=_now(), segments=segments,
                          snapshots=snapshots, runs=runs, model_versions=versions)
        files.save(journal)
        crash_point("erasure.after_journal")
        _execute(settings, journal, files, tracking)
    return ErasureReport(erasure_id=journal.id, dry_run=False, notes=notes, **report_args)


@dataclass(frozen=True)
class ErasureListing:
    """`list_erasures`' answer, the same for `tidelog erasures list` and the API."""

    items: tuple[dict[str, Any], ...]
    pending: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"items": list(self.items), "pending": list(self.pending)}


def list_erasures(settings: Settings) -> ErasureListing:
    """The ledger's entries, oldest first, and the ids of erasures still pending."""
    files = ErasureFiles(Path(settings.home))
    return ErasureListing(items=tuple(ErasureLedger(files).entries()),
                          pending=tuple(j.id for j in files.journals()))


def verify_ledger(settings: Settings) -> LedgerCheck:
    """Walk the ledger's hash chain (`tidelog erasures verify`)."""
    return ErasureLedger(ErasureFiles(Path(settings.home))).verify()


def erasures_of_run(settings: Settings, run_id: str) -> list[dict[str, Any]]:
    """Ledger entries that removed a row from the run's dataset, oldest first."""
    return [e for e in ErasureLedger(ErasureFiles(Path(settings.home))).entries()
            if run_id in e.get("runs", {})]


def erased_sums(entries: list[dict[str, Any]], run_id: str) -> dict[str, list[ContentSum]]:
    """Per table, the kept content sums of the rows the erasures removed from the run."""
    sums: dict[str, list[ContentSum]] = {}
    for entry in entries:
        found = entry["runs"][run_id]
        sums.setdefault(found["table"], []).append(
            ContentSum.parse(found["content_digest"], int(found["rows"])))
    return sums


def key_from_text(text: str) -> dict[str, Any]:
    """The --key argument: a JSON object of the key columns."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ErasureError(f'--key {text!r} is not JSON; give e.g. \'{{"id": 42}}\'') from exc
    if not isinstance(value, dict) or not value:
        raise ErasureError(f'--key {text!r} must be a JSON object, e.g. \'{{"id": 42}}\'')
    return value
