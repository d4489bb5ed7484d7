"""Postgres, seen from tidelog: the one place psycopg connections are opened and
`psycopg.Error`s are mapped into the error tree.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from tidelog.errors import SourceError, SourceUnreachable
from tidelog.redact import redact_dsn

__all__ = ["connect", "postgres_errors", "redact_dsn"]

CONNECT_TIMEOUT = 5


@contextmanager
def postgres_errors(what: str, dsn: str) -> Iterator[None]:
    """Map psycopg errors raised while doing `what`: a lost connection is transient."""
    try:
        yield
    except psycopg.OperationalError as exc:
        raise SourceUnreachable(
            f"Postgres at {redact_dsn(dsn)} failed to {what}: {exc}; check that it is "
            "running and TIDELOG_POSTGRES_DSN points at it") from exc
    except psycopg.Error as exc:
        raise SourceError(f"Postgres at {redact_dsn(dsn)} refused to {what}: {exc}") from exc


def connect(dsn: str, *, autocommit: bool = True, connect_timeout: int = CONNECT_TIMEOUT,
            **kwargs: Any) -> psycopg.Connection[Any]:
    """A connection (use it as a context manager); SourceUnreachable if none opens."""
    try:
        return psycopg.connect(dsn, autocommit=autocommit, connect_timeout=connect_timeout,
                               **kwargs)
    except psycopg.Error as exc:
        raise SourceUnreachable(
            f"cannot connect to Postgres at {redact_dsn(dsn)}: {exc}; check that it is "
            "running and TIDELOG_POSTGRES_DSN points at it") from exc
