"""Erasure on a real archive and snapshot directory (no Kafka, no MLflow): every byte of the
subject goes, the recorded digests still verify (with DuckDB SQL alone), a crash at any
named point leaves old or new state and a re-run completes it, and the ledger chains."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import polars as pl
import pytest

from cdc.columns import with_salts
from cdc.reader import LogIdentity
from snapshotter.archive import Archive
from snapshotter.cut import Cut, PartitionCut
from snapshotter.digest import ContentSum
from snapshotter.erasure import ErasureFiles
from snapshotter.erasure_ledger import ErasureLedger
from snapshotter.row_hashes import with_row_hashes
from snapshotter.snapshots import create_snapshot, open_snapshot
from snapshotter.verify import verify_snapshot
from tidelog.crashpoints import CRASH_ENV, POINTS
from tidelog.errors import ErasureError, SnapshotMirrorError
from tidelog.settings import Settings
from trainer.erasure import erase, list_erasures, verify_ledger

PREFIX = "er"
TABLE = "public.people"
TOPIC = f"{PREFIX}.{TABLE}"
IDENTITY = LogIdentity("cluster-e", "topic-e")
SECRET_NAME = "Zelda Quarrington-Erasable"
SECRET_MAIL = "zelda.q@erase-me.example"
TYPES: dict[str, pl.DataType] = {
    "__partition": pl.Int32(), "__offset": pl.Int64(), "__op": pl.String(),
    "__key": pl.String(), "__lsn": pl.Int64(), "__ts_ms": pl.Int64(), "__tx": pl.String(),
    "__txid": pl.Int64(), "__before": pl.String(), "id": pl.Int64(), "name": pl.String(),
    "email": pl.String(),
}


def _settings(root: Path) -> Settings:
    return Settings(home=root / "home", topic_prefix=PREFIX,
                    archive_root=str(root / "archive"),
                    snapshot_root=str(root / "snapshots"), mlflow_uri="")


def _event(offset: int, op: str, key: int, name: str | None, email: str | None,
           before: str | None = None) -> dict[str, object]:
    upsert = op in "rcu"
    return {"__partition": 0, "__offset": offset, "__op": op,
            "__key": json.dumps({"id": key}, separators=(",", ":")),
            "__lsn": 1000 + offset, "__ts_ms": 1_700_000_000_000 + offset, "__tx": None,
            "__txid": offset, "__before": before, "id": key if upsert else None,
            "name": name if upsert else None, "email": email if upsert else None}


def _segment(archive: Archive, events: list[dict[str, object]]) -> None:
    start, end = int(events[0]["__offset"]), int(events[-1]["__offset"]) + 1  # type: ignore[call-overload]
    archive.write_segment(TOPIC, 0, 0, start, end,  # salted, as the archiver writes
                          with_row_hashes(with_salts(
                              pl.DataFrame(events, schema_overrides=TYPES).to_arrow())))


def _cut(end: int) -> Cut:
    return Cut((PartitionCut(TOPIC, 0, end, 0, IDENTITY.cluster_id, IDENTITY.topic_id),),
               lsn=1000 + end)


def _world(root: Path, archive_root: str | None = None) -> tuple[Settings, list[str]]:
    """Three segments; the subject (id 7) is inserted, updated and kept; two snapshots
    (a full one and a layered one built on it) both hold it. `archive_root`: another
    archive location (object storage) than `root/archive`."""
    settings = _settings(root)
    if archive_root is not None:
        settings = dataclasses.replace(settings, archive_root=archive_root)
    archive = Archive(settings.archive_root)
    archive.open_generation(TOPIC, 0, IDENTITY)
    _segment(archive, [_event(i, "r", i, f"person {i}", f"p{i}@x.example") for i in range(10)]
             + [_event(10, "c", 7 + 100, "other", "o@x.example")])
    _segment(archive, [_event(11, "u", 7, SECRET_NAME, "old@x.example",
                              before=json.dumps({"id": 7, "name": "person 7"})),
                       _event(12, "u", 3, "person three", "p3@x.example")])
    first = create_snapshot(settings, [TABLE], _cut(13), catch_up=False)
    _segment(archive, [_event(13, "u", 7, SECRET_NAME, SECRET_MAIL),
                       _event(14, "u", 4, "person four", "p4@x.example")])
    second = create_snapshot(settings, [TABLE], _cut(15), catch_up=False)
    assert second.built_from == first.id  # the layered layout is erased too
    return settings, [first.id, second.id]


def _files_with(root: Path, needles: list[str]) -> list[str]:
    """Every file under `root` whose raw bytes, or whose Parquet rows read by DuckDB,
    hold any needle."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if any(n.encode() in data for n in needles):
            found.append(str(path))
        elif path.suffix == ".parquet":
            text = str(duckdb.sql(f"select * from read_parquet('{path}')").fetchall())
            if any(n in text for n in needles):
                found.append(str(path))
    return found


def _doc_block(doc: str, marker: str) -> str:
    text = (Path(__file__).resolve().parents[2] / "docs" / doc).read_text()
    blocks = [b for b in re.findall(r"```sql\n(.*?)```", text, flags=re.S)
              if b.startswith(marker)]
    assert len(blocks) == 1, (doc, marker)
    return blocks[0]


def _digest_sql_check(settings: Settings, sid: str) -> bool:
    """The recorded table digest from the files and the manifest, in DuckDB SQL alone:
    the blocks of docs/digest.md and docs/erasure.md."""
    table = open_snapshot(settings, sid).manifest.tables[TABLE]
    directory = Path(settings.snapshot_root) / sid
    con = duckdb.connect()

    def paths(names: tuple[str, ...]) -> str:
        return "[" + ", ".join(f"'{directory / n}'" for n in names) + "]"

    query = f"select * from read_parquet({paths(table.files)})"
    if table.delete_files:
        query = (f"select r.* from read_parquet({paths(table.files)}) r anti join "
                 f"read_parquet({paths(table.delete_files)}) d on r.__key = d.__key")
    if table.delta_files:
        query += f" union all by name select * from read_parquet({paths(table.delta_files)})"
    con.execute(f"create view digest_input as select * exclude (__key) from ({query})")
    con.execute(_doc_block("digest.md", "-- tidelog-digest-v1: table digest"))
    block = _doc_block("erasure.md", "-- tidelog-digest-v1 with erased rows")
    row = con.execute(block.replace("<table>", TABLE)
                      .replace("<manifest>", str(directory / "manifest.json"))).fetchone()
    assert row is not None
    return bool(row[0] == table.digest)


def test_erase_removes_every_byte_and_digests_still_verify(tmp_path: Path) -> None:
    settings, sids = _world(tmp_path)
    before = _files_with(tmp_path, [SECRET_NAME, SECRET_MAIL])
    assert any("archive" in p for p in before) and any("snapshots" in p for p in before)
    recorded = {sid: open_snapshot(settings, sid).manifest for sid in sids}

    plan = erase(settings, TABLE, {"id": 7}, "GDPR art. 17 request #1", "tester",
                 dry_run=True)
    assert plan.erasure_id is None and len(plan.segments) == 3 and set(plan.snapshots) == set(sids)
    assert _files_with(tmp_path, [SECRET_NAME, SECRET_MAIL]) == before  # a dry run changes nothing

    report = erase(settings, TABLE, {"id": 7}, "GDPR art. 17 request #1", "tester")
    assert report.erasure_id and len(report.segments) == 3
    assert _files_with(tmp_path, [SECRET_NAME, SECRET_MAIL, '"id":7']) == []
    for sid in sids:
        manifest = open_snapshot(settings, sid).manifest
        table = manifest.tables[TABLE]
        assert manifest.digest == recorded[sid].digest and table.rows == 11
        assert table.visible_rows == 10 and table.erased[0].erasure == report.erasure_id
        assert verify_snapshot(settings, sid).ok, verify_snapshot(settings, sid)
        assert _digest_sql_check(settings, sid)
        rows = open_snapshot(settings, sid).table(TABLE)
        assert 7 not in rows["id"].to_list() and rows.height == 10
    # the archive still reads, gap-free, and rebuilding the cut gives the erased state
    again = create_snapshot(settings, [TABLE], _cut(16 - 1), incremental=False, catch_up=False)
    assert 7 not in open_snapshot(settings, again.id).table(TABLE)["id"].to_list()
    # a second erase of the same subject finds nothing and says so
    repeat = erase(settings, TABLE, {"id": 7}, "again", "tester")
    assert repeat.erasure_id == report.erasure_id and "already erased" in repeat.notes[-1]
    listing = list_erasures(settings)
    entries = listing.items
    assert [e["id"] for e in entries] == [report.erasure_id] and not listing.pending
    assert listing.to_json() == {"items": list(entries), "pending": []}
    entry = entries[0]
    assert entry["actor"] == "tester" and entry["reason"] == "GDPR art. 17 request #1"
    assert set(entry["snapshots"]) == set(sids) and len(entry["segments"]) == 3
    assert '{"id":7}' not in json.dumps(entry) and len(entry["subject"]) == 64
    assert "kafka_topics" in entry["cannot_erase"] and TOPIC in json.dumps(entry)


def test_erasure_reaches_the_s3_snapshot_root_even_after_a_failed_upload(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A local directory stands in for the S3 root (snapshotter/mirror.py): the rewritten
    snapshots go up, the files holding the subject are deleted there, and an erasure whose
    upload failed is finished by the next `tidelog erase`. With the root unreachable from
    the start, nothing is erased: what only the root holds could not be found."""
    import snapshotter.mirror as mirror
    from snapshotter.mirror import sync
    from tests.unit.test_snapshot_mirror import _consistent

    remote = tmp_path / "remote"
    settings, sids = _world(tmp_path)
    settings = dataclasses.replace(settings, snapshot_remote=str(remote))
    sync(settings)
    assert _files_with(remote, [SECRET_NAME, SECRET_MAIL])  # both snapshots hold it there
    moved = tmp_path / "remote-away"
    remote.rename(moved)
    remote.write_text("unreachable")
    with pytest.raises(SnapshotMirrorError, match="not brought in line"):
        erase(settings, TABLE, {"id": 7}, "GDPR art. 17 request #2", "tester")
    assert not list_erasures(settings).pending
    assert _files_with(tmp_path / "snapshots", [SECRET_NAME])  # nothing was erased
    remote.unlink()
    moved.rename(remote)

    real = mirror._Sync.run
    with monkeypatch.context() as patch:
        def fail(self: object) -> object:
            raise OSError("connection reset")

        patch.setattr(mirror._Sync, "run", fail)
        with pytest.raises(SnapshotMirrorError, match="erasure .* is done here"):
            erase(settings, TABLE, {"id": 7}, "GDPR art. 17 request #2", "tester")
    assert mirror._Sync.run is real
    assert list_erasures(settings).pending  # not finished until every copy is rewritten
    assert _files_with(remote, [SECRET_NAME, SECRET_MAIL])
    report = erase(settings, TABLE, {"id": 7}, "GDPR art. 17 request #2", "tester")
    assert report.erasure_id and not list_erasures(settings).pending
    assert _files_with(tmp_path, [SECRET_NAME, SECRET_MAIL, '"id":7']) == []
    manifests = _consistent(remote)
    assert sorted(manifests) == sorted(sids)
    for sid in sids:
        assert manifests[sid] == open_snapshot(settings, sid).manifest


def test_tampered_erased_contribution_fails_verification(tmp_path: Path) -> None:
    settings, sids = _world(tmp_path)
    erase(settings, TABLE, {"id": 7}, "request", "tester")
    path = Path(settings.snapshot_root) / sids[0] / "manifest.json"
    data = json.loads(path.read_text())
    kept = data["tables"][TABLE]["erased"][0]
    kept["content_digest"] = (ContentSum.parse(kept["content_digest"], 1)
                              + ContentSum(0, 0, 1)).hex
    path.write_text(json.dumps(data))
    assert not verify_snapshot(settings, sids[0]).ok
    assert not _digest_sql_check(settings, sids[0])


def test_refuses_bad_requests(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    with pytest.raises(ErasureError, match="reason"):
        erase(settings, TABLE, {"id": 1}, "  ", "t")
    with pytest.raises(ErasureError, match="schema.table"):
        erase(settings, "people", {"id": 1}, "r", "t")


def test_ledger_chain_detects_edits(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    ledger = ErasureLedger(ErasureFiles(settings.home))
    first = ledger.append({"id": "er_a", "reason": "one"})
    ledger.append({"id": "er_b", "reason": "two"})
    check = verify_ledger(settings)
    assert check.ok and check.entries == 2 and check.head == ledger.entries()[-1]["hash"]
    assert check.to_json() == {"ok": True, "entries": 2, "head": ledger.entries()[-1]["hash"]}
    assert first["prev"] == "0" * 64
    path = ErasureFiles(settings.home).ledger
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0].replace('"one"', '"changed"'), lines[1]]) + "\n")
    broken = verify_ledger(settings)
    assert broken.ok is False and broken.broken_at == 1
    assert broken.to_json() == {"ok": False, "entries": 0, "broken_at": 1,
                                "problem": "entry 1 does not match its hash: it was changed"}
    path.write_text(lines[1] + "\n")  # the first entry removed
    assert verify_ledger(settings).broken_at == 1
    # the keyed hash depends on the home's secret, which stays private
    hashed = ledger.subject_hash(TABLE, '{"id":7}')
    assert oct(ErasureFiles(settings.home).secret.stat().st_mode & 0o777) == "0o600"
    other = ErasureLedger(ErasureFiles(tmp_path / "elsewhere"))
    assert other.subject_hash(TABLE, '{"id":7}') != hashed
    assert ledger.subject_hash(TABLE, '{"id":7}') == hashed


_RUN = """
import sys
from pathlib import Path
from tests.unit.test_erasure import _settings, TABLE
from trainer.erasure import erase
erase(_settings(Path(sys.argv[1])), TABLE, {"id": 7}, "crash test", "tester")
"""

ERASURE_POINTS = sorted(p for p in POINTS if p.startswith("erasure."))


def _state(settings: Settings, sids: list[str]) -> str:
    """'old' or 'new' for what a reader sees; fails on a mix inside one store."""
    archive = Archive(settings.archive_root)
    segments = archive.segments(TOPIC, 0, 0)
    assert [(s.start, s.end) for s in segments] == [(0, 11), (11, 13), (13, 15)]
    archive.verify(segments)
    seen = [7 in pl.read_parquet(s.path)["id"].to_list() for s in segments]
    snaps = []
    for sid in sids:
        snap = open_snapshot(settings, sid)
        assert verify_snapshot(settings, sid).ok
        snaps.append(7 in snap.table(TABLE)["id"].to_list())
    return ",".join(["old" if x else "new" for x in [*seen, *snaps]])


@pytest.mark.parametrize("point", ERASURE_POINTS)
def test_crash_at_each_point_leaves_old_or_new_and_a_rerun_completes(
        tmp_path: Path, point: str) -> None:
    settings, sids = _world(tmp_path)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, CRASH_ENV: point, "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-c", _RUN, str(tmp_path)], env=env, cwd=root,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 137, done.stderr
    # every segment and snapshot is whole: old or new, each readable and verified
    state = _state(settings, sids)
    assert set(state.split(",")) <= {"old", "new"}
    pending = list(list_erasures(settings).pending)
    assert len(pending) == 1  # the journal says an erasure is unfinished
    report = erase(settings, TABLE, {"id": 99}, "another subject", "tester")
    assert report.resumed == pending
    assert _state(settings, sids) == ",".join(["new"] * 5)
    assert _files_with(tmp_path, [SECRET_NAME, SECRET_MAIL, '"id":7']) == []
    assert [e["id"] for e in list_erasures(settings).items] == pending
    assert not list_erasures(settings).pending and verify_ledger(settings).ok
    for sid in sids:
        assert _digest_sql_check(settings, sid)
