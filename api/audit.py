"""The append-only audit log: who did what, when, and with what result.

Recorded: every request that may change something (any method but GET/HEAD/OPTIONS),
every request refused for want of a valid key or role (401/403), and the end of every
job (actor = the key that submitted it). SQLite triggers refuse UPDATE and DELETE on the
table, so not even the API itself can rewrite history.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from api.store import Database, now

__all__ = ["AuditEntry", "AuditLog"]


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


class AuditLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    def record(self, entry: AuditEntry) -> None:
        with self.db.write() as conn:
            conn.execute(
                "insert into audit (at, actor, role, action, method, path, target, status, "
                "result, error_code, job_id, request_id, client) "
                "values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (now(), entry.actor, entry.role, entry.action, entry.method, entry.path,
                 entry.target, entry.status, entry.result, entry.error_code, entry.job_id,
                 entry.request_id, entry.client))

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
