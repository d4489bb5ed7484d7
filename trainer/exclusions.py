"""Rows excluded from training (anomaly removal) without being erased.

An exclusion names a table and a row key (`{"id": 42}`); a training run then reads the
snapshot minus the rows its active exclusions match. Snapshots stay exact copies of the
source (their digests still prove the cut); exclusions apply when the trainer reads them.

The store is append-only, `$TIDELOG_HOME/exclusions/log.jsonl`, one JSON object per line:
`{"seq", "op": "add"|"remove", "id", "table", "key", "reason", "by", "at"}`. The set a
run used is recorded with it (tags `tidelog.exclusions.*` and the artefact
`tidelog/exclusions.json`), so `tidelog rebuild` applies exactly that set, whatever was
added or removed since. docs/retention.md has the details.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import getpass
import hashlib
import json
import os
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from tidelog.errors import ExclusionNotFound, TrainingError
from tidelog.settings import Settings

__all__ = ["Exclusion", "ExclusionSet", "ExclusionStore", "EXCLUSIONS_ARTIFACT",
           "EXCLUSION_TAGS", "apply_exclusions", "parse_key", "exclusion_tags",
           "recorded_set"]

EXCLUSIONS_ARTIFACT = "tidelog/exclusions.json"
SET_ID = "tidelog.exclusions.id"
SET_DIGEST = "tidelog.exclusions.digest"
SET_COUNT = "tidelog.exclusions.count"
REMOVED_PREFIX = "tidelog.exclusions.removed."
EXCLUSION_TAGS = (SET_ID, SET_DIGEST, SET_COUNT)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def parse_key(text: str | Mapping[str, Any]) -> dict[str, Any]:
    """A row key: a JSON object of column -> scalar (string, number or boolean)."""
    if isinstance(text, str):
        try:
            key = json.loads(text)
        except ValueError as exc:
            raise TrainingError(f'--key must be a JSON object like \'{{"id": 42}}\': {exc}'
                                ) from exc
    else:
        key = dict(text)
    if not isinstance(key, dict) or not key:
        raise TrainingError('--key must be a non-empty JSON object like \'{"id": 42}\'')
    bad = sorted(k for k, v in key.items()
                 if not isinstance(v, str | int | float | bool) or v is None)
    if bad:
        raise TrainingError(f"key column(s) {', '.join(bad)} must have a string, number or "
                            "boolean value (a null or nested value matches no row exactly)")
    return {str(k): key[k] for k in sorted(key)}


@dataclass(frozen=True)
class Exclusion:
    id: str
    table: str
    key: dict[str, Any]
    reason: str
    by: str
    at: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "table": self.table, "key": self.key, "reason": self.reason,
                "by": self.by, "at": self.at}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Exclusion:
        return cls(str(data["id"]), str(data["table"]), dict(data["key"]),
                   str(data.get("reason", "")), str(data.get("by", "")), str(data.get("at", "")))


@dataclass(frozen=True)
class ExclusionSet:
    """The exclusions active at one position of the log (`position` = lines read)."""

    position: int
    entries: tuple[Exclusion, ...]

    @property
    def id(self) -> str:
        return f"xs-{self.position}"

    @property
    def digest(self) -> str:
        """sha256 over what decides the rows removed: each entry's id, table and key."""
        body = _canonical(sorted(([e.id, e.table, e.key] for e in self.entries),
                                 key=_canonical))
        return hashlib.sha256(body.encode()).hexdigest()

    def for_tables(self, tables: Iterable[str]) -> ExclusionSet:
        wanted = set(tables)
        return ExclusionSet(self.position, tuple(e for e in self.entries if e.table in wanted))

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "position": self.position, "digest": self.digest,
                "entries": [e.to_json() for e in self.entries]}

    def dumps(self) -> str:
        """The run artefact `tidelog/exclusions.json`."""
        return json.dumps(self.to_json(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ExclusionSet:
        return cls(int(data["position"]),
                   tuple(Exclusion.from_json(e) for e in data.get("entries", [])))


class ExclusionStore:
    """Every path and write of the exclusion log (one writer at a time, by a lock)."""

    def __init__(self, home: Path) -> None:
        self.directory = Path(home) / "exclusions"

    @classmethod
    def for_settings(cls, settings: Settings) -> ExclusionStore:
        return cls(settings.home)

    @property
    def log(self) -> Path:
        return self.directory / "log.jsonl"

    def _records(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        records = []
        for line in self.log.read_bytes().split(b"\n"):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError:
                # Only a crash in the middle of an append leaves a partial last line:
                # that entry never happened (its writer was told nothing either).
                continue
        return records

    def _append(self, record: dict[str, Any]) -> dict[str, Any]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            records = self._records()
            record = {"seq": len(records) + 1, **record}
            line = (_canonical(record) + "\n").encode()
            fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                if self.log.stat().st_size and not self.log.read_bytes().endswith(b"\n"):
                    os.write(fd, b"\n")  # end a torn line, so this one stands alone
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        return record

    def add(self, table: str, key: Mapping[str, Any], reason: str, by: str | None = None
            ) -> Exclusion:
        if "." not in table:
            raise TrainingError(f"table {table!r} must be schema.table, e.g. public.customers")
        if not reason.strip():
            raise TrainingError("an exclusion needs a --reason (it is kept for auditors)")
        record = self._append({"op": "add", "id": f"exc_{uuid.uuid4().hex[:12]}",
                               "table": table, "key": parse_key(dict(key)),
                               "reason": reason, "by": by or _who(), "at": _now()})
        return Exclusion.from_json(record)

    def remove(self, exclusion_id: str, reason: str = "", by: str | None = None
               ) -> Exclusion:
        active = {e.id: e for e in self.active().entries}
        if exclusion_id not in active:
            raise ExclusionNotFound(
                f"no active exclusion {exclusion_id!r}; `tidelog exclusions list` shows "
                "them", exclusion_id=exclusion_id)
        self._append({"op": "remove", "id": exclusion_id, "reason": reason,
                      "by": by or _who(), "at": _now()})
        return active[exclusion_id]

    def active(self, position: int | None = None) -> ExclusionSet:
        """The exclusions in force after the first `position` log lines (all by default)."""
        records = self._records()
        if position is not None:
            if position > len(records):
                raise TrainingError(
                    f"the exclusion log {self.log} has {len(records)} entries, fewer than "
                    f"the {position} a run recorded; it was truncated or replaced. Restore "
                    "it from a backup")
            records = records[:position]
        found: dict[str, Exclusion] = {}
        for record in records:
            if record.get("op") == "add":
                found[str(record["id"])] = Exclusion.from_json(record)
            elif record.get("op") == "remove":
                found.pop(str(record["id"]), None)
        return ExclusionSet(len(records), tuple(found.values()))

    def history(self) -> list[dict[str, Any]]:
        """Every add and remove, oldest first (for auditors)."""
        return self._records()


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def _matches(frame: pl.DataFrame, entry: Exclusion) -> pl.Expr:
    missing = sorted(set(entry.key) - set(frame.columns))
    if missing:
        raise TrainingError(
            f"exclusion {entry.id} names column(s) {', '.join(missing)} that table "
            f"{entry.table} does not have (its columns: {', '.join(frame.columns)}); remove "
            f"it (`tidelog exclude --remove {entry.id}`) and add it with the right key",
            exclusion_id=entry.id)
    expr = pl.lit(True)
    for column, value in entry.key.items():
        dtype = frame.schema[column]
        try:
            literal = pl.select(pl.lit(value).cast(dtype, strict=True)).to_series()[0]
        except (pl.exceptions.PolarsError, ValueError, TypeError) as exc:
            raise TrainingError(
                f"exclusion {entry.id}: value {value!r} of {entry.table}.{column} cannot be "
                f"read as the column's type {dtype}; remove it and give the key as that type",
                exclusion_id=entry.id) from exc
        expr = expr & (pl.col(column) == pl.lit(literal, dtype=dtype))
    return expr


def apply_exclusions(frames: Mapping[str, pl.DataFrame], exclusions: ExclusionSet
                     ) -> tuple[dict[str, pl.DataFrame], dict[str, int]]:
    """The frames minus the rows the exclusions match (row order kept), and the number
    of rows removed per table that has exclusions."""
    result = dict(frames)
    removed: dict[str, int] = {}
    for table in sorted({e.table for e in exclusions.entries}):
        frame = frames.get(table)
        if frame is None:
            continue
        drop = pl.lit(False)
        for entry in (e for e in exclusions.entries if e.table == table):
            drop = drop | _matches(frame, entry)
        kept = frame.filter(~drop)
        removed[table] = frame.height - kept.height
        result[table] = kept
    return result, removed


def exclusion_tags(exclusions: ExclusionSet, removed: Mapping[str, int]) -> dict[str, str]:
    """What a run records of the exclusions it trained without (nothing if none applied)."""
    if not exclusions.entries:
        return {}
    tags = {SET_ID: exclusions.id, SET_DIGEST: exclusions.digest,
            SET_COUNT: str(len(exclusions.entries))}
    tags.update({f"{REMOVED_PREFIX}{t}": str(n) for t, n in sorted(removed.items())})
    return tags


def recorded_set(run_id: str, tags: Mapping[str, str], read_artifact: Any,
                 store: ExclusionStore) -> ExclusionSet | None:
    """The exclusion set a run trained without, checked against its recorded digest:
    from the run's artefact, else from the log at the recorded position."""
    if SET_ID not in tags:
        return None
    digest = tags.get(SET_DIGEST, "")
    found: ExclusionSet | None = None
    try:
        found = ExclusionSet.from_json(json.loads(read_artifact()))
    except (TrainingError, ValueError, KeyError, TypeError, OSError):
        found = None
    if found is None or found.digest != digest:
        position = int(tags[SET_ID].removeprefix("xs-"))
        tables = [t for t in tags.get("tidelog.tables", "").split(",") if t]
        found = store.active(position).for_tables(tables)
    if found.digest != digest:
        raise TrainingError(
            f"run {run_id} trained without exclusion set {tags[SET_ID]} (digest {digest}), "
            f"but neither its {EXCLUSIONS_ARTIFACT} artefact nor the exclusion log "
            f"{store.log} yields that set (digest {found.digest}); restore the log from a "
            "backup before rebuilding", run_id=run_id)
    return found
