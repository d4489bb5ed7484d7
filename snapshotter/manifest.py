"""The snapshot manifest: written last and atomically; no manifest, no snapshot."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from snapshotter.cut import Cut
from tidelog.errors import SnapshotError
from tidelog.redact import redact_dsn, redact_mapping

__all__ = ["ErasedRows", "TableManifest", "Manifest", "MANIFEST_NAME", "FORMAT_VERSION",
           "redacted_source"]

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 2  # 2: delete and delta files, content/schema digests, file checksums


@dataclass(frozen=True)
class ErasedRows:
    """What an erasure removed from a table: the row count and the content sum of the
    removed rows (docs/digest.md), kept so the recorded digest still verifies as
    content(remaining rows) + content(erased rows). Never the rows themselves."""

    erasure: str
    rows: int
    content_digest: str

    def to_json(self) -> dict[str, Any]:
        return {"erasure": self.erasure, "rows": self.rows,
                "content_digest": self.content_digest}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ErasedRows:
        return cls(str(data["erasure"]), int(data["rows"]), str(data["content_digest"]))


@dataclass(frozen=True)
class TableManifest:
    """One table of a snapshot and the files that hold it (docs/archive.md, "Layout").

    The table is the rows of `files`, minus those whose `__key` is listed in
    `delete_files`, plus the rows of `delta_files`. A full build writes only `files`.
    """

    name: str  # schema.table
    topic: str
    rows: int
    columns: tuple[tuple[str, str], ...]  # (name, DuckDB type) in file order
    key_columns: tuple[str, ...]
    digest: str
    files: tuple[str, ...]  # relative to the snapshot directory
    delete_files: tuple[str, ...] = ()
    delta_files: tuple[str, ...] = ()
    content_digest: str = ""  # the two 64-bit row-hash sums, hex (docs/digest.md)
    schema_digest: str = ""
    checksums: dict[str, str] = field(default_factory=dict)  # file -> sha256 of its bytes
    # file -> (size, mtime_ns) when written: a file that still stats the same is taken as
    # unchanged when a later build reuses it (as git's index does); `verify` rehashes all
    file_stats: dict[str, tuple[int, int]] = field(default_factory=dict)
    # Rows removed by erasures since the build; `rows` and the digests stay as recorded
    erased: tuple[ErasedRows, ...] = ()
    # The files keep each row's `__salt`, which its row hash includes (docs/digest.md)
    salted: bool = False

    @property
    def visible_rows(self) -> int:
        """Rows a reader sees: the recorded count minus the erased rows."""
        return self.rows - sum(e.rows for e in self.erased)

    @property
    def all_files(self) -> tuple[str, ...]:
        return (*self.files, *self.delete_files, *self.delta_files)

    @property
    def layered(self) -> bool:
        return bool(self.delete_files or self.delta_files)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "topic": self.topic, "rows": self.rows,
                "columns": [list(c) for c in self.columns],
                "key_columns": list(self.key_columns), "digest": self.digest,
                "files": list(self.files), "delete_files": list(self.delete_files),
                "delta_files": list(self.delta_files),
                "content_digest": self.content_digest, "schema_digest": self.schema_digest,
                "checksums": dict(sorted(self.checksums.items())),
                "file_stats": {k: list(v) for k, v in sorted(self.file_stats.items())},
                **({"erased": [e.to_json() for e in self.erased]} if self.erased else {}),
                **({"row_salt": True} if self.salted else {})}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TableManifest:
        return cls(name=data["name"], topic=data["topic"], rows=int(data["rows"]),
                   columns=tuple((c[0], c[1]) for c in data["columns"]),
                   key_columns=tuple(data["key_columns"]), digest=data["digest"],
                   files=tuple(data["files"]),
                   delete_files=tuple(data.get("delete_files", ())),
                   delta_files=tuple(data.get("delta_files", ())),
                   content_digest=str(data.get("content_digest", "")),
                   schema_digest=str(data.get("schema_digest", "")),
                   checksums={str(k): str(v) for k, v in data.get("checksums", {}).items()},
                   file_stats={str(k): (int(v[0]), int(v[1]))
                               for k, v in data.get("file_stats", {}).items()},
                   erased=tuple(ErasedRows.from_json(e) for e in data.get("erased", ())),
                   salted=bool(data.get("row_salt", False)))


def redacted_source(source: dict[str, Any]) -> dict[str, Any]:
    """`source` with the database DSN and any other credential masked: manifests written
    before tidelog redacted every DSN form may still hold a password."""
    values = redact_mapping(source)
    if isinstance(source.get("database"), str):
        values["database"] = redact_dsn(source["database"])
    return values


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
            version = int(data.get("format_version", 1))
        except (AttributeError, TypeError, ValueError) as exc:
            raise SnapshotError(f"{where} is not a valid tidelog manifest: {exc}") from exc
        if version > FORMAT_VERSION:
            raise SnapshotError(
                f"{where} has manifest format {version}, newer than this tidelog reads "
                f"({FORMAT_VERSION}); upgrade tidelog to read it")
        try:
            return cls(
                id=data["id"],
                cut=Cut.from_json(data["cut"]),
                tables={k: TableManifest.from_json(v) for k, v in data["tables"].items()},
                digest=data["digest"],
                created_at=data["created_at"],
                tidelog_version=data["tidelog_version"],
                built_from=data.get("built_from", "full"),
                source=redacted_source(data.get("source", {})),
                format_version=version,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotError(f"{where} is not a valid tidelog manifest: {exc}") from exc
