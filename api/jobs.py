"""Durable jobs: long operations run in a worker thread pool, their state in SQLite.

States: queued -> running -> succeeded | failed. A job's row is written before the 202
answer, so an acknowledged job is never lost. On startup, a job still `running` was cut
off by a crash of the previous API process (only one process may serve a home, see
`api.app`): kinds whose operation converges to the same result when repeated
(`JobKind.requeue_on_restart`: snapshot creation, connector apply) go back to `queued`;
the others (training, which would log a second MLflow run) are marked `failed` with reason
"interrupted by API restart". Queued jobs simply run after the restart.

Idempotency: a POST with an `Idempotency-Key` header stores (key, request fingerprint,
response) with the job in one transaction; the same key with the same request returns the
same job, with a different request a 409. Keys are scoped to the API key that sent them
and kept for 24 hours.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from api.audit import AuditEntry, AuditLog
from api.errors import HttpError, status_for
from api.store import Database, now
from tidelog.errors import TidelogError
from tidelog.redact import redact_text

__all__ = ["Job", "JobKind", "JobContext", "JobStore", "JobRunner", "INTERRUPTED",
           "IDEMPOTENCY_TTL"]

_LOG = logging.getLogger("tidelog.api.jobs")
INTERRUPTED = "interrupted by API restart"
IDEMPOTENCY_TTL = dt.timedelta(hours=24)
STATES = ("queued", "running", "succeeded", "failed")


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    state: str
    params: dict[str, Any]
    plan: dict[str, Any] | None
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    created_by: str
    attempts: int
    seq: int

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "state": self.state,
                "params": self.params, "plan": self.plan, "result": self.result,
                "error": self.error, "created_at": self.created_at,
                "started_at": self.started_at, "finished_at": self.finished_at,
                "created_by": self.created_by, "attempts": self.attempts,
                "links": {"self": f"/jobs/{self.id}"}}


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _job(row: Any) -> Job:
    return Job(id=row["id"], kind=row["kind"], state=row["state"],
               params=json.loads(row["params"]), plan=_loads(row["plan"]),
               result=_loads(row["result"]), error=_loads(row["error"]),
               created_at=row["created_at"], started_at=row["started_at"],
               finished_at=row["finished_at"], created_by=row["created_by"],
               attempts=row["attempts"], seq=row["seq"])


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


class JobStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def submit(self, kind: str, params: dict[str, Any], principal: str,
               idempotency_key: str | None = None, fingerprint: str = "") -> tuple[Job, bool]:
        """The new job (True), or the one an earlier request with this key made (False)."""
        with self.db.write() as conn:
            if idempotency_key is not None:
                row = conn.execute("select fingerprint, job_id from idempotency "
                                   "where principal = ? and key = ?",
                                   (principal, idempotency_key)).fetchone()
                if row is not None:
                    if row["fingerprint"] != fingerprint or row["job_id"] is None:
                        raise idempotency_conflict(idempotency_key)
                    existing = conn.execute("select * from jobs where id = ?",
                                            (row["job_id"],)).fetchone()
                    return _job(existing), False
            job_id = f"job_{uuid.uuid4().hex}"
            conn.execute("insert into jobs (id, kind, state, params, created_at, created_by) "
                         "values (?, ?, 'queued', ?, ?, ?)",
                         (job_id, kind, _dumps(params), now(), principal))
            if idempotency_key is not None:
                conn.execute("insert into idempotency (principal, key, fingerprint, status, "
                             "response, job_id, created_at) values (?, ?, ?, 202, '', ?, ?)",
                             (principal, idempotency_key, fingerprint, job_id, now()))
            row = conn.execute("select * from jobs where id = ?", (job_id,)).fetchone()
        return _job(row), True

    def get(self, job_id: str) -> Job:
        row = self.db.one("select * from jobs where id = ?", (job_id,))
        if row is None:
            raise HttpError(404, "job_not_found", f"no job {job_id!r}; `GET /jobs` lists them")
        return _job(row)

    def page(self, *, state: str | None = None, kind: str | None = None, after: int = 0,
             limit: int = 50) -> tuple[list[Job], int | None]:
        where: list[str] = ["seq > ?"]
        params: list[object] = [after]
        if state is not None:
            where.append("state = ?")
            params.append(state)
        if kind is not None:
            where.append("kind = ?")
            params.append(kind)
        rows = self.db.query(f"select * from jobs where {' and '.join(where)} order by seq "
                             "limit ?", (*params, limit + 1))
        jobs = [_job(r) for r in rows[:limit]]
        return jobs, (jobs[-1].seq if len(rows) > limit else None)

    def counts(self) -> dict[tuple[str, str], int]:
        rows = self.db.query("select kind, state, count(*) as n from jobs group by kind, state")
        return {(r["kind"], r["state"]): r["n"] for r in rows}

    def claim(self, job_id: str) -> Job | None:
        with self.db.write() as conn:
            cur = conn.execute("update jobs set state = 'running', started_at = ?, "
                               "attempts = attempts + 1 where id = ? and state = 'queued'",
                               (now(), job_id))
            if cur.rowcount == 0:
                return None
            row = conn.execute("select * from jobs where id = ?", (job_id,)).fetchone()
        return _job(row)

    # `attempt` fences writes: only the run that claimed the job (attempts == attempt,
    # still running) may record its plan or outcome, never a stale one from before a
    # restart that was re-queued in the meantime.
    def save_plan(self, job_id: str, attempt: int, plan: dict[str, Any]) -> bool:
        with self.db.write() as conn:
            cur = conn.execute("update jobs set plan = ? where id = ? and attempts = ? "
                               "and state = 'running'", (_dumps(plan), job_id, attempt))
            return cur.rowcount == 1

    def finish(self, job_id: str, attempt: int, *, result: dict[str, Any] | None = None,
               error: dict[str, Any] | None = None) -> Job | None:
        state = "failed" if error is not None else "succeeded"
        with self.db.write() as conn:
            cur = conn.execute(
                "update jobs set state = ?, result = ?, error = ?, finished_at = ? "
                "where id = ? and attempts = ? and state = 'running'",
                (state, None if result is None else _dumps(result),
                 None if error is None else _dumps(error), now(), job_id, attempt))
            if cur.rowcount == 0:
                return None
        return self.get(job_id)

    def recover(self, requeue: Callable[[str], bool]) -> tuple[list[str], list[str]]:
        """After a crash: re-queue or fail every job left `running`; purge old keys."""
        failed, requeued = [], []
        error = _dumps({"code": "interrupted", "message": INTERRUPTED, "details": {}})
        cutoff = (dt.datetime.now(dt.UTC) - IDEMPOTENCY_TTL).isoformat(timespec="microseconds")
        with self.db.write() as conn:
            for row in conn.execute("select id, kind from jobs where state = 'running'"):
                if requeue(row["kind"]):
                    conn.execute("update jobs set state = 'queued' where id = ?", (row["id"],))
                    requeued.append(row["id"])
                else:
                    conn.execute("update jobs set state = 'failed', error = ?, finished_at = ? "
                                 "where id = ?", (error, now(), row["id"]))
                    failed.append(row["id"])
            conn.execute("delete from idempotency where created_at < ?", (cutoff,))
        return failed, requeued

    def queued(self) -> list[str]:
        return [r["id"] for r in self.db.query("select id from jobs where state = 'queued' "
                                               "order by seq")]


def idempotency_conflict(key: str) -> HttpError:
    return HttpError(409, "idempotency_key_reused",
                     f"Idempotency-Key {key!r} was already used with a different request; "
                     "use a new key for a new request", idempotency_key=key)


@dataclass
class JobContext:
    job: Job
    store: JobStore
    plan: dict[str, Any] | None = field(default=None)

    @property
    def params(self) -> dict[str, Any]:
        return self.job.params

    def save_plan(self, plan: dict[str, Any]) -> None:
        """Record what the job decided before doing it, so a re-queued run repeats it."""
        if not self.store.save_plan(self.job.id, self.job.attempts, plan):
            raise HttpError(409, "job_superseded",
                            f"job {self.job.id} was taken over by a later attempt")
        self.plan = plan


@dataclass(frozen=True)
class JobKind:
    name: str
    run: Callable[[JobContext], dict[str, Any]]
    requeue_on_restart: bool = False


class JobRunner:
    def __init__(self, store: JobStore, audit: AuditLog, kinds: dict[str, JobKind],
                 workers: int = 2, on_finish: Callable[[Job], None] | None = None) -> None:
        self.store = store
        self.audit = audit
        self.kinds = kinds
        self.workers = workers
        self.on_finish = on_finish
        self._pool: ThreadPoolExecutor | None = None

    def start(self) -> tuple[list[str], list[str]]:
        failed, requeued = self.store.recover(
            lambda kind: kind in self.kinds and self.kinds[kind].requeue_on_restart)
        for job_id in failed:
            self._audit_end(self.store.get(job_id))
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="tidelog-job")
        for job_id in self.store.queued():
            self._pool.submit(self._run, job_id)
        return failed, requeued

    def stop(self) -> None:
        """Stop taking jobs; queued ones stay queued for the next start."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def submit(self, kind: str, params: dict[str, Any], principal: str,
               idempotency_key: str | None = None, fingerprint: str = "") -> tuple[Job, bool]:
        if kind not in self.kinds:
            raise HttpError(400, "unknown_job_kind", f"no job kind {kind!r}")
        job, created = self.store.submit(kind, params, principal, idempotency_key, fingerprint)
        if created and self._pool is not None:
            self._pool.submit(self._run, job.id)
        return job, created

    def _run(self, job_id: str) -> None:
        job = self.store.claim(job_id)
        if job is None:
            return  # already taken, or finished before a restart
        kind = self.kinds.get(job.kind)
        try:
            if kind is None:
                raise HttpError(500, "unknown_job_kind", f"this API has no job kind {job.kind}")
            result = kind.run(JobContext(job, self.store, job.plan))
            finished = self.store.finish(job_id, job.attempts, result=result)
        except TidelogError as exc:
            status, code = status_for(exc)
            finished = self.store.finish(job_id, job.attempts, error={
                "code": code, "message": exc.message, "status": status,
                "details": json.loads(_dumps(exc.details))})
        except Exception as exc:  # noqa: BLE001 - a job must end in a defined state
            _LOG.exception("job %s (%s) raised", job_id, job.kind)
            finished = self.store.finish(job_id, job.attempts, error={
                "code": "internal", "message": redact_text(f"{type(exc).__name__}: {exc}"),
                "status": 500,
                "details": {}})
        if finished is None:
            _LOG.warning("job %s attempt %d ended after being taken over; its outcome is "
                         "dropped", job_id, job.attempts)
            return
        self._audit_end(finished)
        if self.on_finish is not None:
            try:
                self.on_finish(finished)
            except Exception:  # noqa: BLE001 - a hook must not undo a finished job
                _LOG.exception("on_finish hook failed for job %s", job_id)

    def _audit_end(self, job: Job) -> None:
        try:
            self.audit.record(AuditEntry(
                actor=job.created_by, action=f"job.{job.kind}", method="JOB",
                path=f"/jobs/{job.id}", status=200 if job.state == "succeeded" else 500,
                result=job.state, error_code=(job.error or {}).get("code"), job_id=job.id,
                target=_target(job)))
        except TidelogError:
            _LOG.exception("could not audit the end of job %s", job.id)


def _target(job: Job) -> str | None:
    result = job.result or {}
    for key in ("snapshot_id", "run_id", "new_run_id", "connector"):
        if isinstance(result.get(key), str):
            return str(result[key])
    return None
