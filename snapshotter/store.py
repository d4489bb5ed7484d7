"""The snapshot directory protocol: the one place that knows how snapshots sit on disk.

Under a snapshot root, `<id>/` is a published snapshot if and only if it holds
`manifest.json`. Everything else is hidden and named by what it is:

- `.lock-<id>`: the build lock. A builder (and an erasure, and a delete) holds it
  exclusively; an incremental build holds its base's lock shared, so the base is not
  deleted or rewritten under it.
- `.tmp-<id>-<rand>/`: a build in progress. The files reach the disk first, the manifest
  last, then one rename publishes the directory (`publish`); a crash leaves no snapshot
  or a whole one. A build directory whose lock is free was abandoned by a killed builder.
- `.old-<id>/`: a snapshot set aside while a `--full` rebuild of the same id replaces it;
  put back on the next access if the replacement did not land (`restore_replaced`).
- `.deleted-<id>-<rand>/`: a snapshot moved out of sight by a delete, removed after it.

Snapshot creation (snapshots.py), erasure and garbage collection all go through here.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb

from snapshotter.digest import table_digest
from snapshotter.layout import changed_files, visible_sql
from snapshotter.layout import fsync as _fsync
from snapshotter.manifest import MANIFEST_NAME, Manifest
from tidelog.crashpoints import crash_point
from tidelog.errors import SnapshotNotFound, TidelogError
from tidelog.settings import Settings

__all__ = ["SnapshotStore", "fsync_tree"]


def fsync_tree(directory: Path) -> None:
    """Sync every file under `directory`, then the directories holding them."""
    paths = sorted(directory.rglob("*"), key=lambda p: (p.is_dir(), -len(p.parts)))
    for path in [*paths, directory]:
        _fsync(path)


# Parsed manifests by path, with the stat they were read under. A manifest is only ever
# replaced whole (a new file renamed onto it: a new inode) and parsing every one took
# milliseconds per listing, which a snapshot makes three times (TPC-H, 24 snapshots).
_Stat = tuple[int, int, int, int, int]
_PARSED: dict[Path, tuple[_Stat, Manifest]] = {}
_PARSED_LOCK = threading.Lock()
_PARSED_MAX = 4096


def _stat_key(path: Path) -> _Stat:
    st = path.stat()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _read_manifest(path: Path) -> Manifest:
    """`Manifest.loads` of the file, parsed again only when its stat changed."""
    key = _stat_key(path)  # before the read: a file replaced meanwhile is read again next time
    with _PARSED_LOCK:
        cached = _PARSED.get(path)
    if cached is not None and cached[0] == key:
        return cached[1]
    manifest = Manifest.loads(path.read_text(), str(path))
    with _PARSED_LOCK:
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()
        _PARSED[path] = (key, manifest)
    return manifest


@dataclass(frozen=True)
class SnapshotStore:
    """The snapshots under `root` (module docstring)."""

    root: Path

    @classmethod
    def of(cls, settings: Settings) -> SnapshotStore:
        return cls(Path(settings.snapshot_root))

    # -- reading ---------------------------------------------------------------------

    def path(self, sid: str) -> Path:
        return self.root / sid

    def has(self, sid: str) -> bool:
        """Whether `sid` is published (its manifest is in place)."""
        return (self.root / sid / MANIFEST_NAME).exists()

    def ids(self) -> list[str]:
        """Published snapshot ids, by name."""
        if not self.root.exists():
            return []
        return sorted(child.name for child in self.root.iterdir()
                      if not child.name.startswith(".") and self.has(child.name))

    def manifest(self, sid: str, hint: str = "") -> Manifest:
        """The manifest of published snapshot `sid`, or SnapshotNotFound."""
        manifest_path = self.root / sid / MANIFEST_NAME
        try:
            return _read_manifest(manifest_path)
        except FileNotFoundError:
            raise SnapshotNotFound(f"no snapshot {sid!r} under {self.root}{hint}",
                                   snapshot_id=sid) from None

    def manifests(self) -> list[Manifest]:
        """Every published snapshot's manifest, oldest first (unreadable ones skipped)."""
        found = []
        for sid in self.ids():
            try:
                found.append(self.manifest(sid))
            except TidelogError:
                continue
        return sorted(found, key=lambda m: (m.created_at, m.id))

    def intact(self, manifest: Manifest, con: duckdb.DuckDBPyConnection) -> bool:
        """Whether a snapshot's files are still exactly what its manifest describes."""
        directory = self.root / manifest.id
        for table in manifest.tables.values():
            if table.checksums:  # format 2: a sha256 per file, rehashed unless it stats the same
                if changed_files(directory, table):
                    return False
                continue
            try:  # format 1: recompute the digest
                got = table_digest(con, visible_sql(directory, table, with_salt=True))
            except TidelogError:
                return False
            if got.digest != table.digest:
                return False
        return True

    # -- locks -----------------------------------------------------------------------

    def exclusive(self, sid: str) -> contextlib.AbstractContextManager[None]:
        """The build lock of `sid`: no build of it, none on it as a base, no delete."""
        return self._locked(sid, fcntl.LOCK_EX)

    def shared(self, sid: str) -> contextlib.AbstractContextManager[None]:
        """Held on a base by an incremental build: deleting the base waits for it."""
        return self._locked(sid, fcntl.LOCK_SH)

    @contextlib.contextmanager
    def _locked(self, sid: str, mode: int) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f".lock-{sid}", "a") as lock:
            fcntl.flock(lock, mode)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # -- building and publishing -----------------------------------------------------

    def build_dir(self, sid: str) -> Path:
        """A new, empty build directory for `sid` (the caller holds its lock)."""
        tmp = self.root / f".tmp-{sid}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        return tmp

    def publish(self, tmp: Path, manifest: Manifest) -> None:
        """Make build directory `tmp` the snapshot `manifest.id`: files synced, manifest
        written and synced last, then renamed into place (replacing a published one with
        two renames; a crash between them leaves `.old-<id>`, see `restore_replaced`)."""
        sid = manifest.id
        target = self.root / sid
        fsync_tree(tmp)
        crash_point("snapshot.before_manifest")
        manifest_tmp = tmp / f".{MANIFEST_NAME}.tmp"
        manifest_tmp.write_text(manifest.dumps())
        _fsync(manifest_tmp)
        os.replace(manifest_tmp, tmp / MANIFEST_NAME)
        _fsync(tmp)
        crash_point("snapshot.manifest_in_build_dir")
        if target.exists():
            old = self.root / f".old-{sid}"
            os.replace(target, old)
            _fsync(self.root)
            crash_point("snapshot.old_set_aside")
            os.replace(tmp, target)
            _fsync(self.root)
            shutil.rmtree(old, ignore_errors=True)
            return
        os.replace(tmp, target)
        _fsync(self.root)

    def clear_unpublished(self, sid: str) -> None:
        """Remove what a killed builder of `sid` left (the caller holds its lock): its
        build directories, and a target directory without a manifest (only a publishing
        rename makes a snapshot)."""
        for stale in self.root.glob(f".tmp-{sid}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        target = self.root / sid
        if target.exists() and not self.has(sid):
            shutil.rmtree(target)

    def remove_abandoned_builds(self) -> None:
        """Delete build directories whose builder is gone (killed).

        A live builder holds its id's lock, so a directory whose lock is free is abandoned;
        removing it also releases any base files it had hard-linked.
        """
        for stale in self.root.glob(".tmp-*"):
            sid = stale.name[len(".tmp-"):].rsplit("-", 1)[0]
            with open(self.root / f".lock-{sid}", "a") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a build in progress (or our own, cleaned by the caller)
                try:
                    shutil.rmtree(stale, ignore_errors=True)
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)

    def restore_replaced(self, sid: str) -> None:
        """Put back a snapshot whose replacement by a `--full` rebuild was interrupted
        (the caller holds its lock)."""
        old = self.root / f".old-{sid}"
        if not old.exists():
            return
        if self.has(sid):
            shutil.rmtree(old, ignore_errors=True)  # the new one is in place
        else:
            if (self.root / sid).exists():
                shutil.rmtree(self.root / sid)
            os.replace(old, self.root / sid)
            _fsync(self.root)

    # -- deleting --------------------------------------------------------------------

    def set_aside(self, sid: str, check: Callable[[], object] | None = None) -> Path:
        """Move a snapshot out of sight under its build lock; returns the hidden directory,
        which the caller removes (after telling the catalog). `check` runs under the lock
        first and may refuse by raising (a pin taken meanwhile: pins take `shared`)."""
        if not self.has(sid):
            raise SnapshotNotFound(f"no snapshot {sid!r} under {self.root}", snapshot_id=sid)
        trash = self.root / f".deleted-{sid}-{uuid.uuid4().hex[:8]}"
        with self.exclusive(sid):
            if not self.has(sid):
                raise SnapshotNotFound(f"no snapshot {sid!r} under {self.root}",
                                       snapshot_id=sid)
            if check is not None:
                check()
            os.replace(self.root / sid, trash)
            _fsync(self.root)
        return trash

    def remove_leftovers(self) -> list[str]:
        """Remove what a killed delete left: hidden `.deleted-*` directories."""
        if not self.root.exists():
            return []
        found = sorted(p for p in self.root.glob(".deleted-*") if p.is_dir())
        for path in found:
            shutil.rmtree(path, ignore_errors=True)
        return [p.name for p in found]
