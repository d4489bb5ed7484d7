"""The API's own durable state: one SQLite file (WAL mode) for jobs, API keys, snapshot
pins, idempotency keys and the append-only audit log.

Each thread gets its own connection; writes take `BEGIN IMMEDIATE`, so two writers queue
on SQLite's lock instead of failing half-way. `synchronous=FULL`: a job that was
acknowledged (202) survives a crash of the API process or of the machine.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from api.errors import HttpError

__all__ = ["Database", "now", "AUDIT_TRIGGERS"]

SCHEMA_VERSION = 1

SCHEMA = """
create table if not exists meta (key text primary key, value text not null);

create table if not exists api_keys (
    id text primary key,
    name text not null,
    role text not null check (role in ('reader', 'writer', 'admin')),
    salt blob not null,
    hash blob not null,
    check_bits blob,
    created_at text not null,
    created_by text not null,
    revoked_at text,
    revoked_by text
);

create table if not exists jobs (
    seq integer primary key autoincrement,
    id text not null unique,
    kind text not null,
    state text not null check (state in ('queued', 'running', 'succeeded', 'failed')),
    params text not null,
    plan text,
    result text,
    error text,
    created_at text not null,
    started_at text,
    finished_at text,
    created_by text not null,
    attempts integer not null default 0
);
create index if not exists jobs_by_state on jobs (state, seq);

create table if not exists idempotency (
    principal text not null,
    key text not null,
    fingerprint text not null,
    status integer not null,
    response text not null,
    job_id text,
    created_at text not null,
    primary key (principal, key)
);

create table if not exists pins (
    snapshot_id text primary key,
    pinned_by text not null,
    pinned_at text not null,
    reason text not null default ''
);

create table if not exists audit (
    seq integer primary key autoincrement,
    at text not null,
    actor text not null,
    role text,
    action text not null,
    method text not null,
    path text not null,
    target text,
    status integer not null,
    result text not null,
    error_code text,
    job_id text,
    request_id text,
    client text,
    hash text
);
create index if not exists audit_by_actor on audit (actor, seq);
"""

# Kept apart from SCHEMA: a migration drops and re-creates them (`api.audit`). The insert
# trigger is what stops `INSERT OR REPLACE` on an existing seq: REPLACE deletes the old
# row without firing delete triggers (unless `recursive_triggers` is on), but a BEFORE
# INSERT trigger runs first and still sees it. None of this binds someone who can edit
# the file: the hash chain is what makes that visible.
AUDIT_TRIGGERS = """
create trigger if not exists audit_no_update before update on audit
begin select raise(abort, 'the audit log is append-only'); end;
create trigger if not exists audit_no_delete before delete on audit
begin select raise(abort, 'the audit log is append-only'); end;
create trigger if not exists audit_no_replace before insert on audit
when exists (select 1 from audit where seq = new.seq)
begin select raise(abort, 'the audit log is append-only: seq exists'); end;
"""

# Columns added after the first release: (table, column, declaration).
_ADDED_COLUMNS = (("api_keys", "check_bits", "blob"), ("audit", "hash", "text"))



def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


class Database:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._connections: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self.connection()
            conn.execute("pragma journal_mode=wal")
            conn.executescript(SCHEMA)
            for table, column, declaration in _ADDED_COLUMNS:
                present = {r[1] for r in conn.execute(f"pragma table_info({table})")}
                if column not in present:
                    conn.execute(f"alter table {table} add column {column} {declaration}")
            conn.executescript(AUDIT_TRIGGERS)
            conn.execute("insert or ignore into meta values ('schema_version', ?)",
                         (str(SCHEMA_VERSION),))
        except (OSError, sqlite3.Error) as exc:
            raise HttpError(503, "store_unavailable",
                            f"cannot open the API database {self.path}: {exc}; check that "
                            "TIDELOG_HOME (or TIDELOG_API_DB) is writable") from exc

    def connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                   check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("pragma synchronous=full")
            conn.execute("pragma busy_timeout=30000")
            self._local.conn = conn
            with self._lock:
                self._connections.append((threading.current_thread(), conn))
        return conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        conn = self.connection()
        try:
            conn.execute("begin immediate")
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from exc
        try:
            yield conn
        except BaseException:
            conn.execute("rollback")
            raise
        try:
            conn.execute("commit")
        except sqlite3.Error as exc:
            conn.execute("rollback")
            raise self._unavailable(exc) from exc

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        try:
            return list(self.connection().execute(sql, params).fetchall())
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from exc

    def one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None

    def _unavailable(self, exc: sqlite3.Error) -> HttpError:
        return HttpError(503, "store_unavailable",
                         f"the API database {self.path} failed: {exc}; retry shortly")

    def close(self) -> None:
        """Close the connections of this thread and of threads that have ended; a job
        thread still running keeps its own until it finishes."""
        current = threading.current_thread()
        with self._lock:
            keep = []
            for thread, conn in self._connections:
                if thread is current or not thread.is_alive():
                    try:
                        conn.close()
                    except sqlite3.Error:
                        pass
                else:
                    keep.append((thread, conn))
            self._connections = keep
        self._local.__dict__.pop("conn", None)
