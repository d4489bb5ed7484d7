"""The snapshot manifest: written last and atomically; no manifest, no snapshot."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from snapshotter.cut import Cut
from tidelog.errors import SnapshotError

__all__ = ["TableManifest", "Manifest", "MANIFEST_NAME", "FORMAT_VERSION"]

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class TableManifest:
    name: str  # schema.table
    topic: str
    rows: int
    columns: tuple[tuple[str, str], ...]  # (name, DuckDB type) in file order
    key_columns: tuple[str, ...]
    digest: str
    files: tuple[str, ...]  # relative to the snapshot directory

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "topic": self.topic, "rows": self.rows,
                "columns": [list(c) for c in self.columns],
                "key_columns": list(self.key_columns), "digest": self.digest,
                "files": list(self.files)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TableManifest:
        return cls(name=data["name"], topic=data["topic"], rows=int(data["rows"]),
                   columns=tuple((c[0], c[1]) for c in data["columns"]),
                   key_columns=tuple(data["key_columns"]), digest=data["digest"],
                   files=tuple(data["files"]))


@dataclass(frozen=True)
class Manifest:
    id: str
    cut: Cut
    tables: dict[str, TableManifest]
    digest: str
    created_at: str
    tidelog_version: str
    built_from: str  # "full" or the id of the snapshot it was built from incrementally
    source: dict[str, Any]  # connector, database, topic prefix
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "id": self.id,
            "cut": self.cut.to_json(),
            "tables": {k: v.to_json() for k, v in sorted(self.tables.items())},
            "digest": self.digest,
            "created_at": self.created_at,
            "tidelog_version": self.tidelog_version,
            "built_from": self.built_from,
            "source": self.source,
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True)

    @classmethod
    def loads(cls, text: str, where: str = "manifest") -> Manifest:
        try:
            data = json.loads(text)
            return cls(
                id=data["id"],
                cut=Cut.from_json(data["cut"]),
                tables={k: TableManifest.from_json(v) for k, v in data["tables"].items()},
                digest=data["digest"],
                created_at=data["created_at"],
                tidelog_version=data["tidelog_version"],
                built_from=data.get("built_from", "full"),
                source=data.get("source", {}),
                format_version=int(data.get("format_version", 1)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotError(f"{where} is not a valid tidelog manifest: {exc}") from exc
