"""Readiness: can this API reach Postgres, the broker, Kafka Connect, MLflow and the
archive root right now? Each check has a short deadline and they run in parallel, so a
dead component makes /readyz answer 503 within a few seconds rather than hang.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

# Imported with this module, not inside the check: a first import of the archive's
# dependencies (pyarrow, psycopg) in a readiness thread can take longer than its deadline.
from cdc.connector import connector_status
from snapshotter.archive import Archive
from tidelog.errors import ConnectorError
from tidelog.redact import redact_text, redact_url
from tidelog.settings import Settings

__all__ = ["readiness", "CHECKS"]

TIMEOUT = 3.0


def _postgres(settings: Settings) -> str:
    from tidelog.adapters import postgres

    dsn = settings.require("postgres_dsn")
    with postgres.connect(dsn, connect_timeout=int(TIMEOUT)) as conn, \
            postgres.postgres_errors("report its version", dsn):
        version = conn.execute("show server_version").fetchone()
        level = conn.execute("show wal_level").fetchone()
    wal = level[0] if level else "?"
    note = "" if wal == "logical" else f"; wal_level={wal}, CDC needs logical"
    return f"PostgreSQL {version[0] if version else '?'}{note}"


def _broker(settings: Settings) -> str:
    from tidelog.adapters.kafka import KafkaAdmin

    metadata = KafkaAdmin.for_settings(settings, timeout=TIMEOUT).metadata()
    return f"{len(metadata.brokers)} broker(s), {len(metadata.topics)} topics"


def _connect(settings: Settings) -> str:
    from tidelog.adapters.connect import KafkaConnect

    with KafkaConnect.for_settings(settings, timeout=TIMEOUT) as connect:
        return f"Kafka Connect {connect.version()}"


def _mlflow(settings: Settings) -> str:
    uri = settings.require("mlflow_uri")
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        resp = httpx.get(f"{uri.rstrip('/')}/health", timeout=TIMEOUT)
        resp.raise_for_status()
        return "MLflow tracking server"
    if parsed.scheme == "sqlite":
        path = uri.removeprefix("sqlite:///")
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=TIMEOUT) as conn:
            conn.execute("select 1")
        return f"MLflow SQLite store {path}"
    return f"MLflow store {parsed.scheme or 'file'} (not probed)"


def _archive(settings: Settings) -> str:
    from snapshotter.storage import Storage

    storage = Storage.open(settings.archive_root)
    if not storage.local:
        storage.listdir(storage.base)
        return f"object storage {redact_url(settings.archive_root)}"
    path = Path(storage.base)
    probe = path if path.exists() else next(p for p in path.parents if p.exists())
    if not os.access(probe, os.W_OK):
        raise PermissionError(f"{probe} is not writable")
    return f"{path} ({'exists' if path.exists() else 'will be created'})"


def _capture(settings: Settings) -> str:
    """Not ready while a partition is stopped at a poison event or a connector task FAILED:
    `--at latest` would refuse, and nothing new reaches the archive."""
    failures = Archive(settings.archive_root).failures()
    if failures:
        raise RuntimeError("archiving stopped at " + "; ".join(f.describe() for f in failures))
    try:
        status = connector_status(settings, settings.connector_name)
    except ConnectorError as exc:
        return f"archive has no stopped partition; {exc.message}"
    failed = [f"task {t.get('id')}" for t in status.get("tasks", [])
              if t.get("state") == "FAILED"]
    if status.get("connector", {}).get("state") == "FAILED":
        failed.insert(0, "the connector")
    if failed:
        raise RuntimeError(f"connector {settings.connector_name}: {', '.join(failed)} FAILED; "
                           "see `tidelog connector status`")
    return f"connector {settings.connector_name} running, no stopped partition"


CHECKS: dict[str, Callable[[Settings], str]] = {
    "postgres": _postgres,
    "broker": _broker,
    "connect": _connect,
    "mlflow": _mlflow,
    "archive": _archive,
    "capture": _capture,
}


def readiness(settings: Settings, checks: dict[str, Callable[[Settings], str]] | None = None
              ) -> dict[str, dict[str, Any]]:
    checks = checks or CHECKS
    pool = ThreadPoolExecutor(len(checks), thread_name_prefix="tidelog-ready")
    started = time.monotonic()
    futures = {name: pool.submit(fn, settings) for name, fn in checks.items()}
    result: dict[str, dict[str, Any]] = {}
    for name, future in futures.items():
        remaining = max(0.1, TIMEOUT + 2 - (time.monotonic() - started))
        try:
            result[name] = {"ok": True, "detail": future.result(timeout=remaining)}
        except FutureTimeout:
            result[name] = {"ok": False, "error": f"no answer within {TIMEOUT + 2:.0f}s"}
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
            message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            # httpx quotes the URL it failed on, credentials included
            result[name] = {"ok": False, "error": redact_text(str(message))[:500]}
    pool.shutdown(wait=False)
    return result
