"""An object-store snapshot root kept in line with the local snapshots (snapshotter/
mirror.py): a local directory stands in for the S3 root here; moto's S3 server and the
DuckDB CLI in tests/integration/test_snapshot_remote.py."""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from pathlib import Path

import duckdb
import pytest

from api.retention import delete_snapshot_files
from snapshotter.layout import file_sha256
from snapshotter.manifest import Manifest
from snapshotter.mirror import RECORD, sync
from snapshotter.remote import locate, snapshot_sql
from snapshotter.snapshots import create_snapshot, list_snapshots, open_snapshot
from snapshotter.storage import Storage
from tests.unit.test_snapshot_layout import History, _settings
from tidelog.errors import ConfigError, SnapshotError, SnapshotMirrorError
from tidelog.settings import Settings, load_settings

TABLE = "public.items"


def _mirrored(tmp_path: Path) -> Settings:
    return dataclasses.replace(_settings(tmp_path), snapshot_remote=str(tmp_path / "remote"))


def _remote_ids(root: Path) -> list[str]:
    return sorted(p.parent.name for p in root.glob("*/manifest.json"))


def _consistent(root: Path) -> dict[str, Manifest]:
    """Every manifest at `root`, after checking each file it locates is there with the
    sha256 the manifest records."""
    storage = Storage.open(str(root))
    manifests = {sid: Manifest.loads((root / sid / "manifest.json").read_text())
                 for sid in _remote_ids(root)}
    for manifest in manifests.values():
        owners = locate(storage, manifest, manifests.get)
        for name, table in manifest.tables.items():
            for file in table.all_files:
                path = root / owners[name][file] / file
                assert path.is_file(), f"{manifest.id} locates {path}, which is missing"
                assert file_sha256(path) == table.checksums[file]
    return manifests


def _rows(settings: Settings, sid: str, root: Path | None) -> list[tuple[object, ...]]:
    con = duckdb.connect()
    con.execute(snapshot_sql(settings, sid, str(root) if root else None))
    return con.execute(f'select * from "snap_{sid}".items order by id').fetchall()


def _history(settings: Settings) -> tuple[History, str, str]:
    history = History(settings, TABLE).seed(200)
    base = create_snapshot(settings, [TABLE], history.cut(), catch_up=False)
    for key in random.Random(3).sample(range(200), 4):
        history.event("u", key, v=-1.0, name=f"changed{key}")
    history.event("d", 3)
    layered = create_snapshot(settings, [TABLE], history.cut(), catch_up=False)
    assert layered.built_from == base.id
    return history, base.id, layered.id


def test_create_puts_each_snapshot_on_the_root_layered_on_its_base(tmp_path: Path) -> None:
    settings = _mirrored(tmp_path)
    root = tmp_path / "remote"
    _, base_id, sid = _history(settings)
    assert _remote_ids(root) == sorted([base_id, sid])
    manifests = _consistent(root)
    assert manifests[sid] == open_snapshot(settings, sid).manifest
    table = manifests[sid].tables[TABLE]
    # the layered snapshot's data files are its base's: not copied a second time
    assert all(not (root / sid / f).exists() for f in table.files)
    assert (root / sid / table.delta_files[0]).is_file()
    assert _rows(settings, sid, root) == _rows(settings, sid, None)
    record = json.loads((Path(settings.snapshot_root) / RECORD).read_text())
    assert record == {"snapshots": sorted([base_id, sid])}
    again = sync(settings)
    assert again is not None and again.files == 0 and again.published == ()


def test_deleting_a_base_gives_its_layered_snapshot_own_copies_first(
        tmp_path: Path) -> None:
    settings = _mirrored(tmp_path)
    root = tmp_path / "remote"
    _, base_id, sid = _history(settings)
    expected = _rows(settings, sid, root)
    delete_snapshot_files(settings, base_id)
    assert _remote_ids(root) == [sid]
    assert not (root / base_id).exists() or not any((root / base_id).rglob("*.parquet"))
    _consistent(root)
    table = open_snapshot(settings, sid).manifest.tables[TABLE]
    assert all((root / sid / f).is_file() for f in table.files)
    assert _rows(settings, sid, root) == expected


def test_a_failed_upload_leaves_the_snapshot_here_and_sync_finishes_it(
        tmp_path: Path) -> None:
    settings = _mirrored(tmp_path)
    root = tmp_path / "remote"
    root.write_text("not a directory")  # every write under it fails
    history = History(settings, TABLE).seed(50)
    with pytest.raises(SnapshotMirrorError) as caught:
        create_snapshot(settings, [TABLE], history.cut(), catch_up=False)
    assert "is built and listed here" in caught.value.message
    assert "tidelog snapshot sync" in caught.value.message
    assert caught.value.code == "snapshot_mirror_failed" and caught.value.transient
    [made] = list_snapshots(settings)
    root.unlink()
    report = sync(settings)
    assert report is not None and report.published == (made.id,)
    assert _rows(settings, made.id, root) == _rows(settings, made.id, None)


def test_a_file_whose_content_changes_is_replaced_only_under_a_taken_down_manifest(
        tmp_path: Path) -> None:
    """The root holds an older build of the same id (same file names, other bytes), as
    after a `--full` rebuild: its manifest must not vouch for the new bytes."""
    settings = _mirrored(tmp_path)
    root = tmp_path / "remote"
    history = History(settings, TABLE).seed(120)
    made = create_snapshot(settings, [TABLE], history.cut(), catch_up=False)
    file = made.tables[TABLE].files[0]
    (root / made.id / file).write_bytes(b"an older build's bytes")
    stale = json.loads((root / made.id / "manifest.json").read_text())
    stale["tables"][TABLE]["checksums"][file] = file_sha256(root / made.id / file)
    stale["created_at"] = "2020-01-01T00:00:00.000000+00:00"
    (root / made.id / "manifest.json").write_text(json.dumps(stale))
    _consistent(root)  # the older build is whole

    report = sync(settings)
    assert report is not None and report.published == (made.id,) and report.files == 1
    assert _consistent(root)[made.id] == open_snapshot(settings, made.id).manifest


def test_snapshots_this_store_did_not_write_are_never_removed(tmp_path: Path) -> None:
    settings = _mirrored(tmp_path)
    root = tmp_path / "remote"
    _, base_id, sid = _history(settings)
    # The local copy is lost: a new working copy pointing at the same root.
    fresh = dataclasses.replace(settings, snapshot_root=str(tmp_path / "other-local"))
    report = sync(fresh)
    assert report is not None and report.removed == () and report.swept == 0
    assert _remote_ids(root) == sorted([base_id, sid])
    _consistent(root)


def test_an_s3_snapshot_root_keeps_a_local_working_copy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDELOG_SNAPSHOT_ROOT", "s3://bucket/snaps?region=eu-west-1")
    settings = load_settings(tmp_path)
    assert settings.snapshot_remote == "s3://bucket/snaps?region=eu-west-1"
    assert settings.snapshot_root == str(tmp_path / "snapshots")
    assert settings.snapshot_location == settings.snapshot_remote
    monkeypatch.setenv("TIDELOG_SNAPSHOT_LOCAL", str(tmp_path / "work"))
    settings = load_settings(tmp_path)
    assert settings.snapshot_root == str(tmp_path / "work")
    environ = settings.to_environ()
    assert environ["TIDELOG_SNAPSHOT_ROOT"] == "s3://bucket/snaps?region=eu-west-1"
    assert environ["TIDELOG_SNAPSHOT_LOCAL"] == str(tmp_path / "work")

    monkeypatch.setenv("TIDELOG_SNAPSHOT_ROOT", str(tmp_path / "plain"))
    with pytest.raises(ConfigError, match="TIDELOG_SNAPSHOT_LOCAL is the working copy"):
        load_settings(tmp_path)
    monkeypatch.delenv("TIDELOG_SNAPSHOT_LOCAL")
    assert "TIDELOG_SNAPSHOT_LOCAL" not in load_settings(tmp_path).to_environ()


def test_gc_removes_what_it_deletes_from_the_root(tmp_path: Path) -> None:
    from snapshotter.retention import GcPlan, GcPolicy, collect

    settings = _mirrored(tmp_path)
    root = tmp_path / "remote"
    _, base_id, sid = _history(settings)
    expected = _rows(settings, sid, root)
    plan = GcPlan(GcPolicy(0, 0), (), {sid: ("newest",)}, {base_id: "old"}, (), ())
    result = collect(settings, plan)
    assert result["deleted_snapshots"] == [base_id]
    assert _remote_ids(root) == [sid]
    assert not any(p.is_file() for p in (root / base_id).rglob("*"))
    _consistent(root)
    assert _rows(settings, sid, root) == expected


def test_a_working_copy_without_a_snapshot_fetches_it_from_the_root(tmp_path: Path) -> None:
    settings = _mirrored(tmp_path)
    root = tmp_path / "remote"
    _, base_id, sid = _history(settings)
    want = open_snapshot(settings, sid).table(TABLE)
    # another machine (or this one after losing its disk): an empty working copy
    fresh = dataclasses.replace(settings, snapshot_root=str(tmp_path / "other-local"))
    snapshot = open_snapshot(fresh, sid)
    assert snapshot.manifest == open_snapshot(settings, sid).manifest
    assert snapshot.table(TABLE).equals(want)
    assert snapshot.path == tmp_path / "other-local" / sid
    # its files stat as the manifest's verified marks: opening again rehashes nothing
    table = snapshot.manifest.tables[TABLE]
    from snapshotter.layout import file_stat

    assert all(file_stat(snapshot.path / f) == table.file_stats[f] for f in table.all_files)
    # fetched, it is this store's too, and nothing at the root changes
    report = sync(fresh)
    assert report is not None and report.published == () and report.files == 0
    assert _remote_ids(root) == sorted([base_id, sid])


def test_a_fetched_file_failing_its_sha256_is_refused_and_nothing_kept(
        tmp_path: Path) -> None:
    from tidelog.errors import DigestMismatch

    settings = _mirrored(tmp_path)
    root = tmp_path / "remote"
    history = History(settings, TABLE).seed(40)
    made = create_snapshot(settings, [TABLE], history.cut(), catch_up=False)
    (root / made.id / made.tables[TABLE].files[0]).write_bytes(b"tampered")
    fresh = dataclasses.replace(settings, snapshot_root=str(tmp_path / "other-local"))
    with pytest.raises(DigestMismatch, match="fails the sha256"):
        open_snapshot(fresh, made.id)
    local = tmp_path / "other-local"
    assert not (local / made.id).exists() and not list(local.glob(".tmp-*"))


# -- every step of a sync, and a failure at each ------------------------------------------


class _Watched:
    """The root's filesystem, checking after every change that each manifest there finds
    every file it locates (`_consistent`), and failing the `fail_at`-th change."""

    def __init__(self, fs: object, root: Path, fail_at: int | None) -> None:
        self._fs, self._root, self._fail_at, self.changes = fs, root, fail_at, 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._fs, name)

    def _change(self, what: str) -> None:
        self.changes += 1
        if self.changes == self._fail_at:
            raise OSError(f"connection reset at change {self.changes} ({what})")

    def delete_file(self, path: str) -> None:
        self._change(f"delete {path}")
        self._fs.delete_file(path)  # type: ignore[attr-defined]
        _consistent(self._root)

    def open_output_stream(self, path: str) -> object:
        self._change(f"write {path}")
        return self._fs.open_output_stream(path)  # type: ignore[attr-defined]


def _sync_watched(monkeypatch: pytest.MonkeyPatch, settings: Settings, root: Path,
                  fail_at: int | None) -> _Watched:
    import snapshotter.mirror as mirror
    import snapshotter.remote as remote

    watched: list[_Watched] = []
    real_open, real_upload = Storage.open, remote.upload

    def open_(uri: str) -> Storage:
        storage = real_open(uri)
        watched.append(_Watched(storage.fs, root, fail_at))
        return Storage(watched[-1], storage.base)  # type: ignore[arg-type]

    def upload(storage: Storage, source: Path, target: str) -> None:
        fs = storage.fs
        assert isinstance(fs, _Watched)
        fs._change(f"upload {target}")
        real_upload(Storage(fs._fs, storage.base), source, target)  # type: ignore[arg-type]
        _consistent(root)

    with monkeypatch.context() as patch:
        patch.setattr(mirror.Storage, "open", staticmethod(open_))
        patch.setattr(mirror, "upload", upload)
        try:
            sync(settings)
        finally:
            _consistent(root)
    return watched[0]


def _each_failure(monkeypatch: pytest.MonkeyPatch, settings: Settings, root: Path,
                  change: object) -> None:
    """Make `change` (a callable) to the local snapshots, then sync with a failure at each
    step in turn: every state the root passes through is consistent, and a later sync
    always ends where an uninterrupted one does."""
    import shutil as sh

    saved = root.parent / "saved"
    sh.copytree(root, saved / "root")
    record = Path(settings.snapshot_root) / RECORD
    recorded = record.read_bytes()
    change()  # type: ignore[operator]
    clean = _sync_watched(monkeypatch, settings, root, None).changes
    final = {sid: m.dumps() for sid, m in _consistent(root).items()}
    assert clean > 0
    done = sh.copytree(root, saved / "done")
    for fail_at in range(1, clean + 1):
        sh.rmtree(root)
        sh.copytree(saved / "root", root)
        record.write_bytes(recorded)
        with pytest.raises(SnapshotMirrorError):
            _sync_watched(monkeypatch, settings, root, fail_at)
        sync(settings)
        assert {sid: m.dumps() for sid, m in _consistent(root).items()} == final, fail_at
        leftover = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        assert leftover == sorted(str(p.relative_to(done)) for p in done.rglob("*")
                                  if p.is_file()), fail_at


def _two_tables(settings: Settings) -> tuple[str, str, str]:
    """A base of two tables, a snapshot layered on it and one layered on that."""
    from snapshotter.cut import Cut

    h1, h2 = History(settings, TABLE).seed(60), History(settings, "public.other").seed(40)

    def cut() -> Cut:
        c1, c2 = h1.cut(), h2.cut()
        return Cut(c1.partitions + c2.partitions, lsn=max(c1.lsn, c2.lsn))

    ids = []
    for step in range(3):
        if step:
            h1.event("u", step, v=-1.0, name=f"c{step}")
            h2.event("d", step + 10)
        made = create_snapshot(settings, [TABLE, "public.other"], cut(), catch_up=False)
        assert made.built_from == (ids[-1] if ids else "full")
        ids.append(made.id)
    return ids[0], ids[1], ids[2]


def test_an_erasure_of_a_shared_file_is_consistent_at_every_step(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The erasure renames the base's data file in all three snapshots: the layered ones
    must never locate it under their own prefix, where it is not."""
    from snapshotter.erasure import Subject, erase_snapshots

    settings = _mirrored(tmp_path)
    root = tmp_path / "remote"
    _two_tables(settings)
    _each_failure(monkeypatch, settings, root,
                  lambda: erase_snapshots(settings, "er_1", Subject(TABLE, {"id": 30})))


def test_deleting_a_base_under_a_chain_is_consistent_at_every_step(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _mirrored(tmp_path)
    root = tmp_path / "remote"
    base, _, _ = _two_tables(settings)
    _each_failure(monkeypatch, settings, root,
                  lambda: shutil.rmtree(Path(settings.snapshot_root) / base))


def test_other_bytes_under_a_bases_file_name_are_consistent_at_every_step(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A `--full` rebuild of the base that wrote other bytes for one table (same names):
    the base and every snapshot layered on it come down before the file changes."""
    import os

    import polars as pl

    from snapshotter.layout import file_stat

    settings = _mirrored(tmp_path)
    root = tmp_path / "remote"
    base, _, _ = _two_tables(settings)
    directory = Path(settings.snapshot_root) / base
    manifest = open_snapshot(settings, base).manifest
    file = manifest.tables[TABLE].files[0]

    def rebuild() -> None:
        pl.read_parquet(directory / file).write_parquet(
            directory / "x.parquet", compression="gzip", row_group_size=7)
        os.replace(directory / "x.parquet", directory / file)  # the hard links stay old
        data = json.loads((directory / "manifest.json").read_text())
        data["tables"][TABLE]["checksums"][file] = file_sha256(directory / file)
        data["tables"][TABLE]["file_stats"][file] = list(file_stat(directory / file))
        (directory / "manifest.json").write_text(json.dumps(data))

    _each_failure(monkeypatch, settings, root, rebuild)


def test_a_snapshot_set_aside_by_a_killed_full_rebuild_stays_at_the_root(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import snapshotter.store as store_module

    settings = _mirrored(tmp_path)
    root = tmp_path / "remote"
    _, base, sid = _history(settings)
    real = store_module.crash_point

    def killed(point: str) -> None:
        if point == "snapshot.old_set_aside":
            raise KeyboardInterrupt  # killed between the two renames of a `--full` publish
        real(point)

    monkeypatch.setattr(store_module, "crash_point", killed)
    with pytest.raises(KeyboardInterrupt):
        create_snapshot(settings, [TABLE], open_snapshot(settings, base).manifest.cut,
                        incremental=False, catch_up=False)
    monkeypatch.setattr(store_module, "crash_point", real)
    report = sync(settings)
    assert report is not None and report.removed == ()
    assert _remote_ids(root) == sorted([base, sid])
    _consistent(root)


def test_an_erasure_reaches_snapshots_only_the_root_holds(tmp_path: Path) -> None:
    from tests.unit.test_erasure import SECRET_MAIL, SECRET_NAME, _files_with, _world
    from tests.unit.test_erasure import TABLE as PEOPLE
    from trainer.erasure import erase, list_erasures

    remote = tmp_path / "remote"
    settings, sids = _world(tmp_path)
    settings = dataclasses.replace(settings, snapshot_remote=str(remote))
    sync(settings)
    # the working copy is lost; the root still holds both snapshots and the subject
    fresh = dataclasses.replace(settings, snapshot_root=str(tmp_path / "new-local"))
    report = erase(fresh, PEOPLE, {"id": 7}, "GDPR art. 17", "tester")
    assert any("only the snapshot root held" in note for note in report.notes)
    assert set(report.snapshots) == set(sids) and not list_erasures(fresh).pending
    assert _files_with(remote, [SECRET_NAME, SECRET_MAIL, '"id":7']) == []
    assert sorted(_consistent(remote)) == sorted(sids)


def test_nothing_secret_in_what_sync_reports(tmp_path: Path) -> None:
    from snapshotter.remote import plain_root
    from tidelog.openlineage import storage_dataset

    uri = "s3://AKIDEXAMPLE:wJalrSECRETKEY@bucket/snaps?region=eu-west-1"
    assert plain_root(uri) == "s3://bucket/snaps"
    assert storage_dataset(uri, "public.items") == ("s3://bucket", "snaps/public.items")


# -- what a sync takes down, and whose snapshots it leaves alone ----------------------------


def _operations(monkeypatch: pytest.MonkeyPatch, settings: Settings, root: Path
                ) -> list[tuple[str, str]]:
    """The changes one `sync` makes at the root: (upload | put | delete, `<id>/<path>`)."""
    import snapshotter.mirror as mirror
    import snapshotter.remote as remote

    done: list[tuple[str, str]] = []
    real_open, real_upload = Storage.open, remote.upload
    prefix = str(root) + "/"

    class Spy:
        def __init__(self, fs: object) -> None:
            self._fs = fs

        def __getattr__(self, name: str) -> object:
            return getattr(self._fs, name)

        def delete_file(self, path: str) -> None:
            done.append(("delete", path.removeprefix(prefix)))
            self._fs.delete_file(path)  # type: ignore[attr-defined]

        def open_output_stream(self, path: str) -> object:
            done.append(("put", path.removeprefix(prefix)))
            return self._fs.open_output_stream(path)  # type: ignore[attr-defined]

    def open_(uri: str) -> Storage:
        storage = real_open(uri)
        return Storage(Spy(storage.fs), storage.base)  # type: ignore[arg-type]

    def upload(storage: Storage, source: Path, target: str) -> None:
        done.append(("upload", target.removeprefix(prefix)))
        real_upload(Storage(storage.fs._fs, storage.base), source, target)  # type: ignore[attr-defined]

    with monkeypatch.context() as patch:
        patch.setattr(mirror.Storage, "open", staticmethod(open_))
        patch.setattr(mirror, "upload", upload)
        sync(settings)
    return done


def _manifest_changes(done: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(op, key.split("/")[0]) for op, key in done if key.endswith("/manifest.json")]


def test_only_what_must_come_down_comes_down(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _mirrored(tmp_path)
    root = tmp_path / "remote"
    base, middle, top = _two_tables(settings)
    # a plain layered create: its own files and manifest, nothing taken down
    history = History(settings, "public.third").seed(5)
    made = create_snapshot(settings, ["public.third"], history.cut(), catch_up=False)
    history.event("u", 1, v=-1.0, name="x")
    layered = create_snapshot(settings, ["public.third"], history.cut(), catch_up=False)
    assert layered.built_from == made.id
    # deleting the base of a chain: the others get their own copies first, and only the
    # base's manifest goes (what the others read never goes missing)
    shutil.rmtree(Path(settings.snapshot_root) / base)
    done = _operations(monkeypatch, settings, root)
    assert _manifest_changes(done) == [("delete", base)]
    assert ("upload", f"{middle}/{open_snapshot(settings, middle).manifest.tables[TABLE].files[0]}"
            ) in done
    _consistent(root)
    # a manifest whose files stay the same is replaced in place
    path = Path(settings.snapshot_root) / middle / "manifest.json"
    data = json.loads(path.read_text())
    data["tidelog_version"] = "0.0.0+rebuilt"
    path.write_text(json.dumps(data))
    done = _operations(monkeypatch, settings, root)
    assert _manifest_changes(done) == [("put", middle)]
    assert [op for op, _ in done if op == "upload"] == []
    _consistent(root)


def _forget(settings: Settings, sid: str) -> None:
    """`sid` stays at the root, but this store no longer has or records it: another
    machine's snapshot, as far as this one knows."""
    local = Path(settings.snapshot_root)
    shutil.rmtree(local / sid)
    data = json.loads((local / RECORD).read_text())
    data["snapshots"].remove(sid)
    (local / RECORD).write_text(json.dumps(data))


def test_a_snapshot_of_theirs_layered_on_ours_is_never_taken_down(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from snapshotter.erasure import Subject, erase_snapshots

    settings = _mirrored(tmp_path)
    root = tmp_path / "remote"
    _, _, top = _two_tables(settings)
    _forget(settings, top)
    theirs = (root / top / "manifest.json").read_bytes()
    # erasing a key of a file it reads through ours would take it down: refused whole
    erase_snapshots(settings, "er_1", Subject(TABLE, {"id": 30}))
    before = sorted(str(p) for p in root.rglob("*") if p.is_file())
    with pytest.raises(SnapshotError, match=f"snapshot {top} .* did not write") as caught:
        sync(settings)
    assert not isinstance(caught.value, SnapshotMirrorError)  # not worth retrying as is
    assert sorted(str(p) for p in root.rglob("*") if p.is_file()) == before
    assert (root / top / "manifest.json").read_bytes() == theirs
    # once fetched here it is this store's to take down and put back
    open_snapshot(settings, top)
    erase_snapshots(settings, "er_1", Subject(TABLE, {"id": 30}))
    sync(settings)
    assert sorted(_consistent(root)) == sorted(_remote_ids(root)) and top in _remote_ids(root)


def test_a_deleted_snapshot_theirs_read_is_handed_over_not_blocking(tmp_path: Path) -> None:
    settings = _mirrored(tmp_path)
    root = tmp_path / "remote"
    _, middle, top = _two_tables(settings)
    _forget(settings, top)
    shutil.rmtree(Path(settings.snapshot_root) / middle)
    report = sync(settings)
    assert report is not None and report.removed == ()
    assert middle in _remote_ids(root) and top in _remote_ids(root)
    assert middle not in json.loads((Path(settings.snapshot_root) / RECORD).read_text())[
        "snapshots"]
    _consistent(root)
    assert sync(settings) is not None  # and later syncs go on


def test_a_snapshot_deleted_here_is_not_fetched_back(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import snapshotter.mirror as mirror
    from snapshotter.mirror import fetch_holding
    from tidelog.errors import SnapshotNotFound

    settings = _mirrored(tmp_path)
    root = tmp_path / "remote"
    _, base, sid = _history(settings)
    with monkeypatch.context() as patch:  # the delete's sync fails: still at the root
        patch.setattr(mirror._Sync, "run", lambda self: (_ for _ in ()).throw(OSError("down")))
        with pytest.raises(SnapshotMirrorError):
            delete_snapshot_files(settings, sid)
    assert sid in _remote_ids(root)
    with pytest.raises(SnapshotNotFound, match="was deleted here"):
        open_snapshot(settings, sid)
    assert fetch_holding(settings, TABLE) == []
    assert not (Path(settings.snapshot_root) / sid).exists()
    sync(settings)
    assert _remote_ids(root) == [base]


def test_a_fetched_snapshot_is_not_removed_there_by_a_delete_here(tmp_path: Path) -> None:
    settings = _mirrored(tmp_path)
    root = tmp_path / "remote"
    _, base, sid = _history(settings)
    reader = dataclasses.replace(settings, snapshot_root=str(tmp_path / "reader"))
    open_snapshot(reader, sid)
    sync(reader)
    delete_snapshot_files(reader, sid)
    assert _remote_ids(root) == sorted([base, sid])
