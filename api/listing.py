"""Filtering and keyset pagination of snapshot, job and audit listings.

Cursors are opaque to clients (URL-safe base64 of the last item's sort key), so a page
boundary stays put while new items arrive; a cursor that does not decode is a 422 on
`query.cursor`, like any other invalid input.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from api.errors import HttpError
from snapshotter.manifest import Manifest

__all__ = ["encode_cursor", "decode_cursor", "SnapshotFilter", "page_snapshots",
           "snapshot_summary", "utc_text"]


def encode_cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def decode_cursor(text: str | None, shape: type) -> Any:
    if text is None:
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, UnicodeDecodeError):
        value = None
    valid = (isinstance(value, shape) and not isinstance(value, bool)
             and (not isinstance(value, list)
                  or (len(value) == 2 and all(isinstance(v, str) for v in value))))
    if not valid:
        raise HttpError(422, "validation_error", "invalid input: query.cursor",
                        errors=[{"field": "query.cursor", "loc": ["query", "cursor"],
                                 "message": "not a cursor from a previous page",
                                 "type": "cursor"}])
    return value


def utc_text(value: dt.datetime | None) -> str | None:
    """A timestamp as the stores write it (ISO, UTC); naive input is taken as UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).isoformat(timespec="microseconds")


def _created(manifest: Manifest) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(manifest.created_at)
    except ValueError:
        return dt.datetime.min.replace(tzinfo=dt.UTC)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class SnapshotFilter:
    table: str | None = None
    created_after: dt.datetime | None = None
    created_before: dt.datetime | None = None
    digest: str | None = None

    def matches(self, m: Manifest) -> bool:
        created = _created(m)
        return ((self.table is None or self.table in m.tables)
                and (self.digest is None or m.digest == self.digest
                     or any(t.digest == self.digest for t in m.tables.values()))
                and (self.created_after is None or created > _aware(self.created_after))
                and (self.created_before is None or created < _aware(self.created_before)))


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def snapshot_summary(m: Manifest, pinned: bool) -> dict[str, Any]:
    return {"id": m.id, "created_at": m.created_at, "tables": sorted(m.tables),
            "rows": sum(t.rows for t in m.tables.values()), "digest": m.digest,
            "built_from": m.built_from, "cut": m.cut.to_json(), "pinned": pinned}


def page_snapshots(manifests: Iterable[Manifest], pinned: set[str], where: SnapshotFilter,
                   cursor: str | None, limit: int) -> dict[str, Any]:
    """Oldest first (creation time, then id), `limit` per page."""
    after = decode_cursor(cursor, list)
    chosen = sorted((m for m in manifests if where.matches(m)),
                    key=lambda m: (m.created_at, m.id))
    if after is not None:
        chosen = [m for m in chosen if (m.created_at, m.id) > (after[0], after[1])]
    page = chosen[:limit]
    next_cursor = (encode_cursor([page[-1].created_at, page[-1].id])
                   if len(chosen) > limit else None)
    return {"items": [snapshot_summary(m, m.id in pinned) for m in page],
            "next_cursor": next_cursor}
