"""Compare a snapshot with live Postgres, value by value (for `verify --against-source`).

Only meaningful for a snapshot of the current cut with no writes in flight; values are
compared after mapping both sides to the same Python types (numeric as its exact text,
uuid as text, JSON as the text Postgres prints, which is what Debezium carries), so a
difference is a real difference of content.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any

from psycopg.types.string import TextLoader

from snapshotter.snapshots import Snapshot
from tidelog.adapters import postgres
from tidelog.settings import Settings

__all__ = ["compare_with_source", "normalise"]


def normalise(value: Any) -> Any:
    """Map a value to a comparable form."""
    if value is None:
        return None
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.UTC)
    if isinstance(value, list):
        return [normalise(v) for v in value]
    if isinstance(value, memoryview):
        return bytes(value)
    return value


def compare_with_source(settings: Settings, snap: Snapshot, limit: int = 10
                        ) -> dict[str, Any]:
    result: dict[str, Any] = {}
    dsn = settings.require("postgres_dsn")
    conn = postgres.connect(dsn, autocommit=False, connect_timeout=10)
    for json_type in ("json", "jsonb"):
        conn.adapters.register_loader(json_type, TextLoader)
    with conn, postgres.postgres_errors(f"read {', '.join(snap.manifest.tables)}", dsn):
        for name, table in sorted(snap.manifest.tables.items()):
            keys = list(table.key_columns)
            cur = conn.execute(f"select * from {name}")
            columns = [d.name for d in cur.description or []]
            source = {
                tuple(row[columns.index(k)] for k in keys): dict(zip(columns, row, strict=True))
                for row in cur.fetchall()
            }
            frame = snap.table(name)
            mine = {tuple(r[k] for k in keys): r for r in frame.to_dicts()}
            differing = []
            for key in source.keys() | mine.keys():
                a, b = source.get(key), mine.get(key)
                if a is None or b is None:
                    differing.append({"key": list(key), "only_in": "source" if b is None
                                      else "snapshot"})
                    continue
                cols = set(a) | set(b)
                bad = [c for c in sorted(cols)
                       if normalise(a.get(c)) != normalise(b.get(c))]
                if bad:
                    differing.append({"key": [str(k) for k in key], "columns": bad})
            result[name] = {"ok": not differing, "rows_source": len(source),
                            "rows_snapshot": len(mine), "differences": len(differing),
                            "examples": differing[:limit]}
    return result
