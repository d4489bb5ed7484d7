"""Where the trainer gets snapshots from: a small protocol over the snapshotter.

The trainer never imports `snapshotter.snapshots` at module import time, so unit tests can
inject `trainer.testing.FakeSnapshotProvider` and the trainer stays importable while the
snapshotter's heavier dependencies (Kafka client, archive) are absent or broken.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import duckdb
    import polars as pl

    from snapshotter.cut import Cut
    from snapshotter.manifest import Manifest
    from tidelog.settings import Settings

__all__ = ["SnapshotLike", "SnapshotProvider", "SnapshotterProvider", "default_provider"]


@runtime_checkable
class SnapshotLike(Protocol):
    """What the trainer reads from a snapshot (`snapshotter.snapshots.Snapshot` has it)."""

    @property
    def manifest(self) -> Manifest: ...

    @property
    def path(self) -> Path: ...

    def table(self, name: str) -> pl.DataFrame: ...

    def tables(self) -> dict[str, pl.DataFrame]: ...

    def duckdb(self) -> duckdb.DuckDBPyConnection: ...


class SnapshotProvider(Protocol):
    def resolve_cut(self, settings: Settings, tables: Sequence[str], at: str | Cut, *,
                    allow_stale: bool = False) -> Cut:
        """The cut `at` names for `tables` ("latest" = the newest the archive can serve;
        refused while capture is behind the source unless `allow_stale`)."""
        ...

    def create_snapshot(self, settings: Settings, tables: Sequence[str],
                        at: str | Cut = "latest") -> Manifest: ...

    def open_snapshot(self, settings: Settings, snapshot_id: str) -> SnapshotLike: ...

    def rebuild_snapshot(self, settings: Settings, cut: Cut, tables: Sequence[str],
                         into: Path) -> Manifest:
        """Re-materialise `cut` from the archive alone into a fresh directory."""
        ...

    def open_rebuilt(self, manifest: Manifest, into: Path) -> SnapshotLike:
        """The snapshot `rebuild_snapshot(..., into)` just wrote, for reading its tables."""
        ...

    def list_snapshots(self, settings: Settings) -> list[Manifest]: ...


class SnapshotterProvider:
    """The real thing: `snapshotter.snapshots`, imported on first use."""

    def resolve_cut(self, settings: Settings, tables: Sequence[str], at: str | Cut, *,
                    allow_stale: bool = False) -> Cut:
        from snapshotter import snapshots

        return snapshots.resolve_cut(settings, list(tables), at, allow_stale=allow_stale)

    def create_snapshot(self, settings: Settings, tables: Sequence[str],
                        at: str | Cut = "latest") -> Manifest:
        from snapshotter import snapshots

        return snapshots.create_snapshot(settings, tables, at)

    def open_snapshot(self, settings: Settings, snapshot_id: str) -> SnapshotLike:
        from snapshotter import snapshots

        return snapshots.open_snapshot(settings, snapshot_id)

    def rebuild_snapshot(self, settings: Settings, cut: Cut, tables: Sequence[str],
                         into: Path) -> Manifest:
        from snapshotter import snapshots

        return snapshots.rebuild_snapshot(settings, cut, tables, into)

    def open_rebuilt(self, manifest: Manifest, into: Path) -> SnapshotLike:
        from snapshotter import snapshots
        from snapshotter.manifest import MANIFEST_NAME

        # rebuild_snapshot writes `<into>/<id>/`; accept `<into>/` itself as well.
        path = into / manifest.id if (into / manifest.id / MANIFEST_NAME).exists() else into
        return snapshots.Snapshot(manifest, path)

    def list_snapshots(self, settings: Settings) -> list[Manifest]:
        from snapshotter import snapshots

        return snapshots.list_snapshots(settings)


def default_provider() -> SnapshotProvider:
    return SnapshotterProvider()
