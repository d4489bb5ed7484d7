"""Snapshots on an S3 root: every change to the local snapshots reaches it.

With `TIDELOG_SNAPSHOT_ROOT=s3://bucket/prefix`, tidelog builds, locks, verifies and
erases in a local working copy (`TIDELOG_SNAPSHOT_LOCAL`, default
`$TIDELOG_HOME/snapshots`), and `sync` brings the root in line with it before the command
that changed it returns: `snapshot create` (and `--full`), an erasure, `gc` and a delete.

What the root holds is what `snapshot publish` writes (snapshotter/remote.py): `<id>/…`
with `manifest.json` last, a layered snapshot's unchanged files read from its base's
prefix (`locate`). `sync` keeps that true at every step, so a reader that finds a
manifest finds every file it locates:

1. The ids whose manifest this store writes there are recorded first (`.mirrored.json`
   in the local root): a snapshot deleted here is then removed there, even after a
   crash, and one this store never wrote (another machine's, one it only fetched, any
   while the local copy was lost) is never removed, nor ever taken down.
2. Every file a local snapshot needs there is uploaded, checked against its manifest's
   sha256 first, under the snapshot's shared lock. A file a snapshot now needs under its
   own prefix because its base's copy changes or goes away is uploaded before that.
3. Manifests that would name a missing file at some later step (an erasure renaming a
   file its base shares, a `--full` rebuild writing other bytes under the same names)
   are taken down, layered ones first; then the files whose content changes are
   replaced. `_Plan` works out which, by playing the steps in memory first.
4. Manifests that changed are written, bases first; those of snapshots deleted here are
   deleted, layered ones first. A snapshot deleted here that one of theirs is layered on
   stays, handed over to them.
5. Objects under this store's prefixes that no manifest needs any more are deleted (the
   files an erasure replaced, a deleted snapshot's files and directory markers); the
   record is rewritten last.

One writer per root: the local lock orders this store's own commands; two machines
writing one root would delete each other's uploads in step 5.

`fetch` goes the other way: a snapshot at the root that the working copy lacks (built
before the working copy was lost, or on another machine) is downloaded into it, every file
checked against its manifest's sha256, and published there as a build is (manifest last,
one rename), so `open_snapshot` and everything built on it find it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from snapshotter.layout import file_sha256
from snapshotter.manifest import MANIFEST_NAME, Manifest
from snapshotter.remote import Locations, locate, plain_root, upload
from snapshotter.storage import Storage
from snapshotter.store import SnapshotStore
from tidelog.errors import (
    ConfigError,
    DigestMismatch,
    SnapshotError,
    SnapshotMirrorError,
    SnapshotNotFound,
    TidelogError,
)
from tidelog.settings import Settings

__all__ = ["MirrorReport", "fetch", "fetch_holding", "sync", "sync_or_raise", "RECORD"]

RECORD = ".mirrored.json"
_LOCK = ".mirror.lock"


@dataclass(frozen=True)
class MirrorReport:
    root: str  # without query parameters
    published: tuple[str, ...]  # ids whose manifest was written
    removed: tuple[str, ...]  # ids deleted there because they were deleted here
    files: int  # files uploaded
    bytes: int
    swept: int  # objects deleted that no manifest needed any more


def sync(settings: Settings) -> MirrorReport | None:
    """Bring the S3 snapshot root in line with the local snapshots (module docstring);
    None without one. SnapshotMirrorError (transient) when the root cannot be reached or
    written; a fault here or in what the root holds is raised as itself."""
    if not settings.snapshot_remote:
        return None
    store = SnapshotStore.of(settings)
    root = settings.snapshot_remote
    try:
        storage = Storage.open(root)
    except TidelogError as exc:
        raise ConfigError(f"TIDELOG_SNAPSHOT_ROOT: {exc.message}") from exc
    try:
        with _locked(store.root):
            return _Sync(store, storage, plain_root(root)).run()
    except (OSError, pa.ArrowException) as exc:
        raise SnapshotMirrorError(_failed(root, str(exc)), root=plain_root(root)) from exc


def sync_or_raise(settings: Settings, what: str) -> MirrorReport | None:
    """`sync` after a change that is already done here: `what` says which, for the
    message, so that whoever retries knows the local side needs nothing."""
    try:
        return sync(settings)
    except TidelogError as exc:
        raise type(exc)(f"{what}; {exc.message}", **exc.details) from exc


def fetch(settings: Settings, sid: str) -> Manifest | None:
    """Download snapshot `sid` from the S3 root into the working copy (module docstring);
    its manifest, or None when there is no S3 root or it does not hold `sid`."""
    if not settings.snapshot_remote:
        return None
    store = SnapshotStore.of(settings)
    root = settings.snapshot_remote
    try:
        storage = Storage.open(root)
        path = storage.path(sid, MANIFEST_NAME)
        if not storage.exists(path):
            return None
        # the mirror's lock: no sync replaces or sweeps a file while it comes down
        with _locked(store.root), store.exclusive(sid):
            if store.has(sid):
                return store.manifest(sid)  # fetched (or built) meanwhile
            if sid in _read_record(store.root) and not _present_here(store.root, sid):
                raise SnapshotNotFound(
                    f"snapshot {sid} was deleted here; its copy at the snapshot root "
                    f"{plain_root(root)} is removed by the next `tidelog snapshot sync`",
                    snapshot_id=sid)
            manifest = Manifest.loads(storage.read_bytes(path).decode(), path)
            store.clear_unpublished(sid)
            tmp = store.build_dir(sid)
            try:
                _download(storage, manifest, tmp)
                store.publish(tmp, manifest)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    except (TidelogError, OSError) as exc:
        if isinstance(exc, (DigestMismatch, SnapshotNotFound)):
            raise
        reason = exc.message if isinstance(exc, TidelogError) else str(exc)
        raise SnapshotMirrorError(
            f"fetching snapshot {sid} from the snapshot root {plain_root(root)} failed: "
            f"{reason}; nothing of it was kept here. Retry once the root is reachable",
            root=plain_root(root), snapshot_id=sid) from exc
    return manifest


def fetch_holding(settings: Settings, table: str) -> list[str]:
    """Fetch every snapshot at the S3 root that holds `table` and the working copy lacks
    (an erasure must reach them too); their ids."""
    if not settings.snapshot_remote:
        return []
    store = SnapshotStore.of(settings)
    root = settings.snapshot_remote
    try:
        storage = Storage.open(root)
        deleted = {sid for sid in _read_record(store.root)
                   if not _present_here(store.root, sid)}  # removed there at the next sync
        ids = [sid for sid in storage.listdir(storage.base)
               if not store.has(sid) and sid not in deleted
               and storage.exists(storage.path(sid, MANIFEST_NAME))]
        holding = [sid for sid in ids if table in Manifest.loads(
            storage.read_bytes(storage.path(sid, MANIFEST_NAME)).decode()).tables]
    except (OSError, pa.ArrowException) as exc:
        raise SnapshotMirrorError(_failed(root, str(exc)), root=plain_root(root)) from exc
    for sid in holding:
        fetch(settings, sid)
    return holding


def _download(storage: Storage, manifest: Manifest, into: Path) -> None:
    owners = locate(storage, manifest)
    for name, table in manifest.tables.items():
        for file in table.all_files:
            target = into / file
            target.parent.mkdir(parents=True, exist_ok=True)
            pafs.copy_files(storage.path(owners[name][file], file), str(target),
                            source_filesystem=storage.fs,
                            destination_filesystem=pafs.LocalFileSystem())
            if table.checksums:
                if file_sha256(target) != table.checksums.get(file):
                    raise DigestMismatch(
                        f"snapshot {manifest.id} file {file} at the snapshot root fails the "
                        "sha256 its manifest records; nothing of it was kept here. Check "
                        "the root's copy, or create the snapshot again from the archive",
                        snapshot_id=manifest.id, table=name, files=[file])
                # checked: mark it as the manifest's verified mark says (size, mtime)
                if (stat := table.file_stats.get(file)) is not None \
                        and stat[0] == target.stat().st_size:
                    os.utime(target, ns=(stat[1], stat[1]))


def _failed(root: str, reason: str) -> str:
    return (f"the snapshot root {plain_root(root)} was not brought in line with the local "
            f"snapshots: {reason}. Every manifest there names files that are there (a "
            "snapshot may be missing there meanwhile); rerun `tidelog snapshot sync` once "
            "it is reachable")


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / _LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_record(root: Path) -> set[str]:
    path = root / RECORD
    if not path.exists():
        return set()
    try:
        return set(json.loads(path.read_text())["snapshots"])
    except (ValueError, KeyError, TypeError) as exc:
        raise SnapshotError(
            f"{path} is unreadable ({exc}): it lists the snapshots this store put at the "
            "snapshot root, which only it may remove there. Restore it, or delete it: "
            "then no snapshot deleted here before is removed there") from exc


def _write_record(root: Path, ids: set[str]) -> None:
    from snapshotter.erasure import write_atomically

    write_atomically(root / RECORD, json.dumps({"snapshots": sorted(ids)}, indent=1))


def _present_here(root: Path, sid: str) -> bool:
    """Whether the working copy holds any trace of `sid`: a snapshot set aside by a
    `--full` rebuild (`.old-<id>`), a build, a manifest it cannot read. Only a snapshot
    of which nothing is left here was deleted here."""
    return ((root / sid).exists() or (root / f".old-{sid}").exists()
            or any(root.glob(f".tmp-{sid}-*")))


def _depths(manifests: dict[str, Manifest]) -> dict[str, int]:
    """How many bases below each snapshot are among `manifests` (0: none). Walked, not
    recursed: a chain grows by one with every incremental snapshot."""
    depths: dict[str, int] = {}
    for sid in manifests:
        chain: list[str] = []
        current = sid
        while current not in depths:
            chain.append(current)
            base = manifests[current].built_from
            if base not in manifests or base in chain:
                below = -1  # the bottom of the chain (or a cycle): depth 0
                break
            current = base
        else:
            below = depths[current]
        for above in reversed(chain):
            below += 1
            depths[above] = below
    return depths


class _Plan:
    """The order of a sync's changes at the root, checked in memory before it starts:
    fresh files up; manifests taken down (`down`, layered first); files whose content
    changes replaced; changed and new manifests written (base first); those of snapshots
    deleted here removed (layered first). `settle` picks the fewest manifests to take
    down such that at every one of these steps each manifest there finds every file it
    locates, with its sha256."""

    def __init__(self, storage: Storage, remote: dict[str, Manifest],
                 target: dict[str, Manifest], objects: set[str],
                 before: dict[str, tuple[str, str]], after: dict[str, tuple[str, str]],
                 fresh: list[str], clashes: set[str], changed: set[str],
                 gone: set[str]) -> None:
        self.storage, self.remote, self.target = storage, remote, target
        self.objects, self.before, self.after = objects, before, after
        self.fresh, self.clashes, self.changed, self.gone = fresh, clashes, changed, gone
        self.remote_depths, self.target_depths = _depths(remote), _depths(target)

    def deletions(self, ids: set[str]) -> list[str]:
        return sorted(ids, key=lambda s: (-self.remote_depths[s], s))

    def writes(self, down: set[str]) -> list[str]:
        ids = (self.target.keys() - self.remote.keys()) | self.changed | (
            down & self.target.keys())
        return sorted(ids, key=lambda s: (self.target_depths[s], s))

    def _broken(self, visible: dict[str, Manifest], present: dict[str, str]) -> set[str]:
        broken = set()
        memo: dict[str, Locations] = {}
        for sid, manifest in visible.items():
            owners = locate(self.storage, manifest, visible.get, memo)
            for name, table in manifest.tables.items():
                for file in table.all_files:
                    key, sha = f"{owners[name][file]}/{file}", table.checksums.get(file, "")
                    if key not in present or (sha and present[key] != sha):
                        broken.add(sid)
                        break
        return broken

    def _simulate(self, down: set[str], early: bool
                  ) -> tuple[set[str], set[str], set[str]]:
        """(manifests broken in their old form, in their new form) at some step, and
        those broken before the first."""
        present = {k: sha for k, (sha, _) in self.before.items() if k in self.objects}
        present.update({k: self.after[k][0] for k in self.fresh})
        visible = dict(self.remote)
        old: set[str] = set()
        new: set[str] = set()
        written: set[str] = set()

        def check() -> None:
            for sid in self._broken(visible, present):
                (new if sid in written else old).add(sid)

        initial = self._broken(visible, present)
        for sid in self.deletions(down | (self.gone if early else set())):
            visible.pop(sid, None)
            check()
        present.update({k: self.after[k][0] for k in self.clashes})
        check()
        for sid in self.writes(down):
            visible[sid] = self.target[sid]
            written.add(sid)
            check()
        if not early:
            for sid in self.deletions(self.gone - down):
                visible.pop(sid, None)
                check()
        return old, new, initial

    def settle(self, theirs: set[str], root: str) -> tuple[set[str], bool]:
        """(manifests to take down, whether the deleted ones go before the writes)."""
        down: set[str] = set()
        early = False
        while True:
            old, new, initial = self._simulate(down, early)
            if new:
                if early:
                    raise SnapshotError(
                        f"the snapshot root {root} cannot be brought in line without a "
                        f"manifest naming a missing file ({', '.join(sorted(new))}); nothing "
                        "was changed there. Run `tidelog snapshot sync` after the other "
                        "snapshot changes in progress are done")
                early = True
                continue
            old -= down | (initial & theirs)  # theirs broken already: not ours to mend
            if not old:
                return down, early
            if blocked := sorted(old & theirs):
                raise SnapshotError(
                    f"snapshot {blocked[0]} at the snapshot root {root}, which this store did "
                    "not write, reads files this change replaces or removes; nothing was "
                    "changed there. Delete it there, or open it here (which fetches it) and "
                    "rerun `tidelog snapshot sync`", snapshot_id=blocked[0])
            down |= old


class _Sync:
    def __init__(self, store: SnapshotStore, storage: Storage, root: str) -> None:
        self.store, self.storage, self.root = store, storage, root
        self.files = self.bytes = 0

    def _listing(self) -> tuple[set[str], set[str]]:
        """Every object under the root, as `<id>/<path>`; and every directory."""
        selector = pafs.FileSelector(self.storage.base, recursive=True, allow_not_found=True)
        prefix = self.storage.base + "/"
        infos = self.storage.fs.get_file_info(selector)
        return ({i.path.removeprefix(prefix) for i in infos if i.type == pafs.FileType.File},
                {i.path.removeprefix(prefix) for i in infos
                 if i.type == pafs.FileType.Directory})

    def _remote_manifests(self, objects: set[str]) -> dict[str, Manifest]:
        found = {}
        for key in sorted(objects):
            sid, _, rest = key.partition("/")
            if rest == MANIFEST_NAME:
                path = self.storage.path(sid, MANIFEST_NAME)
                try:
                    found[sid] = Manifest.loads(self.storage.read_bytes(path).decode(), path)
                except (TidelogError, ValueError) as exc:
                    reason = exc.message if isinstance(exc, TidelogError) else str(exc)
                    raise SnapshotError(
                        f"the manifest {sid}/{MANIFEST_NAME} at the snapshot root "
                        f"{self.root} cannot be read ({reason}); nothing was changed there. "
                        "Delete that snapshot there, or upgrade tidelog if a newer one "
                        "wrote it", snapshot_id=sid) from exc
        return found

    def _owners(self, manifests: dict[str, Manifest]) -> dict[str, dict[str, dict[str, str]]]:
        memo: dict[str, Locations] = {}
        return {sid: locate(self.storage, m, manifests.get, memo)
                for sid, m in manifests.items()}

    @staticmethod
    def _needs(manifests: dict[str, Manifest], owners: dict[str, dict[str, dict[str, str]]],
               local: dict[str, Manifest]) -> dict[str, tuple[str, str]]:
        """`<owner>/<file>` → (sha256, id of a snapshot listing it, a local one where one
        does) for every file the manifests locate at the root."""
        needs: dict[str, tuple[str, str]] = {}
        for sid, manifest in manifests.items():
            for name, table in manifest.tables.items():
                for file in table.all_files:
                    key = f"{owners[sid][name][file]}/{file}"
                    if key not in needs or (sid in local and needs[key][1] not in local):
                        needs[key] = (table.checksums.get(file, ""), sid)
        return needs

    def run(self) -> MirrorReport:
        objects, directories = self._listing()
        remote = self._remote_manifests(objects)
        local = {m.id: m for m in self.store.manifests()}
        record = _read_record(self.store.root)
        theirs = remote.keys() - record - local.keys()  # never taken down, never removed
        gone = {sid for sid in (record - local.keys()) & remote.keys()
                if not _present_here(self.store.root, sid)}
        # A snapshot deleted here that one of theirs is layered on stays there, theirs now.
        depths = _depths(remote)
        for sid in sorted(remote, key=lambda s: -depths[s]):
            if sid in theirs and remote[sid].built_from in gone:
                gone.discard(remote[sid].built_from)
                theirs.add(remote[sid].built_from)
        handed_over = theirs & record

        # What the root is to hold: every manifest there, the local ones as they are now,
        # without those deleted here.
        target = {sid: m for sid, m in remote.items() if sid not in gone}
        target.update(local)
        before = self._needs(remote, self._owners(remote), local)
        after = self._needs(target, self._owners(target), local)
        missing = sorted(key for key, (_, sid) in after.items()
                         if sid not in local and (key not in objects or key not in before
                                                  or before[key][0] != after[key][0]))
        if missing:
            raise SnapshotError(
                f"snapshot {after[missing[0]][1]} at the snapshot root {self.root}, which "
                f"this store did not write, would lose its file {missing[0]}; nothing was "
                "changed there. Delete it there, or open it here (which fetches it) and "
                "rerun `tidelog snapshot sync`", snapshot_id=after[missing[0]][1])
        clashes = {key for key, (sha, _) in after.items()
                   if key in before and before[key][0] != sha}
        fresh = [key for key in sorted(after)
                 if key not in clashes and (key not in objects or key not in before)]
        plan = _Plan(self.storage, remote, target, objects, before, after, fresh, clashes,
                     {sid for sid in local if remote.get(sid) != local[sid]}, gone)
        down, early = plan.settle(theirs, self.root)
        mine = (record - handed_over) | set(plan.writes(down))
        _write_record(self.store.root, mine)  # 1. before anything of ours is uploaded

        # 2. new objects (no manifest there names them yet)
        self._upload(fresh, after, local)
        # 3. take down, the layered ones first; then what changes under its name
        for sid in plan.deletions(down | (gone if early else set())):
            self.storage.fs.delete_file(self.storage.path(sid, MANIFEST_NAME))
        self._upload(sorted(clashes), after, local)
        # 4. manifests, bases first (a reader locates a file through its base's manifest)
        published = plan.writes(down)
        for sid in published:
            self._put(self.storage.path(sid, MANIFEST_NAME), target[sid].dumps().encode())
        if not early:
            for sid in plan.deletions(gone - down):
                self.storage.fs.delete_file(self.storage.path(sid, MANIFEST_NAME))

        # 5. what no manifest needs any more, under this store's prefixes only
        stale = sorted(key for key in objects
                       if key.partition("/")[0] in mine and key not in after
                       and key.partition("/")[2] != MANIFEST_NAME)
        for key in stale:
            self.storage.fs.delete_file(self.storage.path(key))
        for sid in sorted(mine - target.keys()):  # markers too: they would name its tables
            if sid in directories and not any(k.startswith(f"{sid}/") for k in after):
                self.storage.fs.delete_dir(self.storage.path(sid))
        # last: until the sweep is done, a deleted id stays this store's to clean up
        _write_record(self.store.root, mine & target.keys())
        return MirrorReport(self.root, tuple(published), tuple(sorted(gone)), self.files,
                            self.bytes, len(stale))

    def _put(self, path: str, data: bytes) -> None:
        """A whole object (a PUT is atomic)."""
        with self.storage.fs.open_output_stream(path) as out:
            out.write(data)

    def _upload(self, keys: list[str], needs: dict[str, tuple[str, str]],
                local: dict[str, Manifest]) -> None:
        from snapshotter.snapshots import Snapshot

        by_snapshot: dict[str, list[str]] = {}
        for key in keys:
            by_snapshot.setdefault(needs[key][1], []).append(key)
        for sid, of_it in by_snapshot.items():
            # held shared: no rebuild or erasure of it while its files are checked and sent
            with self.store.shared(sid):
                if not self.store.has(sid) or self.store.manifest(sid) != local[sid]:
                    raise SnapshotMirrorError(
                        f"snapshot {sid} changed here while the snapshot root {self.root} "
                        "was brought in line; the change brings it in line when it is done, "
                        "or rerun `tidelog snapshot sync`", snapshot_id=sid)
                snapshot = Snapshot(local[sid], self.store.path(sid))
                for name in snapshot.manifest.tables:
                    snapshot.verify(name)  # never upload what its manifest does not vouch for
                for key in of_it:
                    source = snapshot.path / key.partition("/")[2]
                    upload(self.storage, source, self.storage.path(key))
                    self.files += 1
                    self.bytes += os.stat(source).st_size
