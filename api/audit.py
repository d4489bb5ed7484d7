"""The append-only audit log: who did what, when, and with what result.

Recorded: every request that may change something (any method but GET/HEAD/OPTIONS),
every request refused for want of a valid key or role (401/403), and the end of every
job (actor = the key that submitted it).

Two guards. SQLite triggers refuse UPDATE, DELETE and `INSERT OR REPLACE` of an existing
`seq`, so the API itself cannot rewrite history. And the entries form a hash chain: each
stores `hash = sha256(previous entry's hash + "\\n" + its own canonical content)`, seq
included, so whoever edits the file directly (dropping the triggers first) leaves a break
that `verify()` (`GET /audit/verify`, `tidelog api audit verify`) reports at the first
changed, inserted or missing entry. The chain has no secret: someone who can write the
file can also remove the newest entries, or recompute every hash after an edit. Only a
`head` kept somewhere else shows that. See docs/security.md.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from api.store import AUDIT_TRIGGERS, Database, now

__all__ = ["AuditEntry", "AuditLog", "GENESIS", "entry_hash"]

GENESIS = "0" * 64  # the "previous hash" of the first entry
# The content the hash covers, in this order: every column but the hash itself.
CHAINED = ("seq", "at", "actor", "role", "action", "method", "path", "target", "status",
           "result", "error_code", "job_id", "request_id", "client")


@dataclass(frozen=True)
class AuditEntry:
    actor: str
    action: str
    method: str
    path: str
    status: int
    result: str  # "ok", "accepted", "denied", "error", "succeeded", "failed"
    role: str | None = None
    target: str | None = None
    error_code: str | None = None
    job_id: str | None = None
    request_id: str | None = None
    client: str | None = None


def entry_hash(previous: str, row: Any) -> str:
    content = json.dumps([row[c] for c in CHAINED], ensure_ascii=False,
                         separators=(",", ":"))
    return hashlib.sha256(f"{previous}\n{content}".encode()).hexdigest()


def _next_seq(conn: sqlite3.Connection) -> tuple[int, str]:
    """The next seq and the hash to chain to. The next seq continues sqlite_sequence, so
    entries deleted from the end leave a gap that the next entry makes visible."""
    last = conn.execute("select seq, hash from audit order by seq desc limit 1").fetchone()
    counter = conn.execute("select seq from sqlite_sequence where name = 'audit'").fetchone()
    top = max(last["seq"] if last else 0, counter[0] if counter else 0)
    return top + 1, (last["hash"] if last and last["hash"] else GENESIS)


class AuditLog:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._chain_unhashed()

    def _chain_unhashed(self) -> None:
        """Entries written before the chain existed get their hashes once, in seq order.
        Once: afterwards an entry without a hash is a break that `verify` reports, not
        something a restart would quietly chain in."""
        if self.db.one("select 1 from meta where key = 'audit_chain'") is not None:
            return
        with self.db.write() as conn:
            conn.execute("drop trigger if exists audit_no_update")
            previous = GENESIS
            for row in conn.execute("select * from audit order by seq").fetchall():
                digest = row["hash"] or entry_hash(previous, row)
                if row["hash"] is None:
                    conn.execute("update audit set hash = ? where seq = ?",
                                 (digest, row["seq"]))
                previous = digest
            for statement in _statements(AUDIT_TRIGGERS):
                conn.execute(statement)
            conn.execute("insert or ignore into meta values ('audit_chain', ?)", (now(),))

    def record(self, entry: AuditEntry) -> None:
        with self.db.write() as conn:
            seq, previous = _next_seq(conn)
            row = {"seq": seq, "at": now(), "actor": entry.actor, "role": entry.role,
                   "action": entry.action, "method": entry.method, "path": entry.path,
                   "target": entry.target, "status": entry.status, "result": entry.result,
                   "error_code": entry.error_code, "job_id": entry.job_id,
                   "request_id": entry.request_id, "client": entry.client}
            conn.execute(
                f"insert into audit ({', '.join(CHAINED)}, hash) "
                f"values ({', '.join('?' * len(CHAINED))}, ?)",
                (*(row[c] for c in CHAINED), entry_hash(previous, row)))

    def verify(self) -> dict[str, Any]:
        """Walk the chain: the first entry that is missing, or does not match its hash."""
        previous, expected, entries = GENESIS, 1, 0
        head: dict[str, Any] | None = None
        conn = self.db.connection()
        for row in conn.execute("select * from audit order by seq"):
            entries += 1
            seq = row["seq"]
            if seq != expected:
                return _broken(expected, entries - 1, head,
                               f"entries {expected}..{seq - 1} are missing (deleted)"
                               if seq > expected else f"entry {seq} is out of order")
            if row["hash"] != entry_hash(previous, row):
                return _broken(seq, entries - 1, head,
                               f"entry {seq} does not match its hash: it was changed or "
                               "replaced" if row["hash"] else f"entry {seq} has no hash")
            previous, expected = row["hash"], seq + 1
            head = {"seq": seq, "hash": row["hash"]}
        return {"ok": True, "entries": entries, "first_broken_seq": None, "reason": None,
                "head": head}

    def query(self, *, actor: str | None = None, action: str | None = None,
              result: str | None = None, since: str | None = None, until: str | None = None,
              after: int = 0, limit: int = 100) -> tuple[list[dict[str, Any]], int | None]:
        """Entries oldest first, after sequence number `after`; plus the next cursor."""
        where: list[str] = ["seq > ?"]
        params: list[object] = [after]
        for column, value in (("actor", actor), ("action", action), ("result", result)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            where.append("at >= ?")
            params.append(since)
        if until is not None:
            where.append("at < ?")
            params.append(until)
        rows = self.db.query(f"select * from audit where {' and '.join(where)} "
                             "order by seq limit ?", (*params, limit + 1))
        entries = [dict(r) for r in rows[:limit]]
        return entries, (entries[-1]["seq"] if len(rows) > limit else None)


def _broken(seq: int, good: int, head: dict[str, Any] | None, reason: str) -> dict[str, Any]:
    return {"ok": False, "entries": good, "first_broken_seq": seq, "reason": reason,
            "head": head}


def _statements(script: str) -> Iterable[str]:
    # executescript would commit the open transaction; run the triggers one by one.
    for part in script.split("end;"):
        if part.strip():
            yield part.strip() + " end;"
