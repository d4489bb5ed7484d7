"""SIGKILL of the archiver and of `snapshot create` at random moments: never a partial
snapshot, never a duplicated or skipped offset; reruns give the same digests."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from cdc.connector import ConnectorSpec, apply
from snapshotter.archive import Archive
from snapshotter.manifest import MANIFEST_NAME
from snapshotter.snapshots import list_snapshots
from tests.integration.cdc_helpers import (
    cli_env,
    execute,
    private_settings,
    unique_name,
    wait_for_events,
)
from tidelog.settings import Settings

pytestmark = pytest.mark.integration

TABLE = "public.crash_snap"
ROWS = 40_000


def _cli(env: Settings, *args: str, **extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "tidelog.cli", *args],
                            env=cli_env(env, **extra),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _kill_after(proc: subprocess.Popen[bytes], seconds: float) -> bool:
    """SIGKILL `proc` after `seconds` unless it finished; True if it was killed."""
    try:
        proc.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


@pytest.fixture(scope="module")
def env(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    name = unique_name("crash")
    root = tmp_path_factory.mktemp("crashdata")
    local = private_settings(settings, root, name)
    execute(settings, f"drop table if exists {TABLE}",
            f"create table {TABLE} (id int primary key, v text, n numeric(8, 2))",
            f"insert into {TABLE} select g, md5(g::text), g / 3.0 "
            f"from generate_series(1, {ROWS}) g")
    apply(local, ConnectorSpec(name, (TABLE,), name), timeout=180)
    execute(settings, f"update {TABLE} set v = 'changed' where id % 5 = 0",
            f"delete from {TABLE} where id % 13 = 0",
            f"update {TABLE} set v = 'done' where id = 1")
    wait_for_events(local, f"{name}.{TABLE}", lambda ev: any(
        e.after and e.after.get("v") == "done" for e in ev), timeout=120)
    return local


def test_archiver_killed_at_random_moments_is_exactly_once(env: Settings) -> None:
    rng = random.Random(7)
    kills = 0
    for _ in range(6):
        proc = _cli(env, "archive", "run", "--batch-size", "2000")
        kills += _kill_after(proc, rng.uniform(0.5, 4.0))
    final = _cli(env, "archive", "run", "--batch-size", "2000")
    out, err = final.communicate(timeout=300)
    assert final.returncode == 0, err.decode()
    assert kills >= 1, "the archiver always finished before the kill; nothing was tested"
    archive = Archive(env.archive_root)
    topic = f"{env.topic_prefix}.{TABLE}"
    gen = archive.generations(topic, 0)[-1]
    segments = archive.segments(topic, 0, gen.number)
    assert segments[0].start == 0
    for before, after in zip(segments, segments[1:], strict=False):
        assert before.end == after.start, "segments overlap or leave a gap"
    offsets = pl.concat([pl.read_parquet(s.path, columns=["__offset"]) for s in segments])
    assert offsets["__offset"].is_unique().all()
    assert offsets["__offset"].to_list() == list(range(segments[-1].end))
    leftovers = [p for p in Path(env.archive_root).rglob(".tmp-*")]
    assert not leftovers


def test_snapshot_create_killed_at_random_moments(env: Settings) -> None:
    rng = random.Random(11)
    digests = set()
    root = Path(env.snapshot_root)
    for attempt in range(5):
        proc = _cli(env, "snapshot", "create", "--tables", TABLE, "--full")
        killed = _kill_after(proc, rng.uniform(0.3, 3.0))
        # whatever the moment, every visible snapshot directory is complete
        for child in root.iterdir() if root.exists() else []:
            if not child.name.startswith("."):
                assert (child / MANIFEST_NAME).exists(), f"partial snapshot {child}"
        if not killed:
            assert proc.returncode == 0, proc.stderr.read().decode() if proc.stderr else ""
        for manifest in list_snapshots(env):
            digests.add(manifest.digest)
            for shot in manifest.tables.values():
                for f in shot.all_files:
                    assert (root / manifest.id / f).exists()
        # start each attempt afresh so the kill can hit every phase of a build
        if attempt < 4:
            for child in root.iterdir() if root.exists() else []:
                subprocess.run(["rm", "-rf", str(child)], check=True)
    final = _cli(env, "snapshot", "create", "--tables", TABLE, "--full", "--json")
    out, err = final.communicate(timeout=300)
    assert final.returncode == 0, err.decode()
    again = _cli(env, "snapshot", "create", "--tables", TABLE, "--full", "--json")
    out2, _ = again.communicate(timeout=300)
    import json

    first, second = json.loads(out), json.loads(out2)
    assert first["digest"] == second["digest"] and first["id"] == second["id"]
    assert digests <= {first["digest"]}, "a killed build produced a different snapshot"
    time.sleep(0)


def test_incremental_snapshot_killed_at_random_moments(env: Settings,
                                                       tmp_path: Path) -> None:
    """The layered build (hard links, delete and delta files) killed at any moment: no
    partial snapshot, the base intact, and the finished one equal to a full rebuild."""
    import json

    from snapshotter.snapshots import rebuild_snapshot, resolve_cut, snapshot_id
    from snapshotter.verify import verify_snapshot

    base_out, err = _cli(env, "snapshot", "create", "--tables", TABLE, "--json").communicate(
        timeout=300)
    assert base_out, err.decode()
    base = json.loads(base_out)
    execute(env, f"update {TABLE} set v = 'late' where id % 97 = 0",
            f"delete from {TABLE} where id % 89 = 0", f"update {TABLE} set v = 'end' where id = 2")
    wait_for_events(env, f"{env.topic_prefix}.{TABLE}", lambda ev: any(
        e.after and e.after.get("v") == "end" for e in ev), timeout=120)
    done = _cli(env, "archive", "run")
    assert done.wait(timeout=300) == 0
    cut = resolve_cut(env, [TABLE], "latest", catch_up=False)
    target = Path(env.snapshot_root) / snapshot_id(cut, [TABLE])
    rng = random.Random(5)
    kills = 0
    for _ in range(6):
        if target.exists():
            subprocess.run(["rm", "-rf", str(target)], check=True)
        proc = _cli(env, "snapshot", "create", "--tables", TABLE, "--at",
                    json.dumps(cut.to_json()))
        kills += _kill_after(proc, rng.uniform(0.4, 2.5))
        for child in Path(env.snapshot_root).iterdir():
            if not child.name.startswith("."):
                assert (child / MANIFEST_NAME).exists(), f"partial snapshot {child}"
        assert verify_snapshot(env, base["id"]).ok, "a killed build damaged its base"
    assert kills >= 1, "every build finished before the kill; nothing was tested"
    final_out, err = _cli(env, "snapshot", "create", "--tables", TABLE, "--at",
                          json.dumps(cut.to_json()), "--json").communicate(timeout=300)
    final = json.loads(final_out or b"{}") or pytest.fail(err.decode())
    assert final["built_from"] == base["id"]
    rebuilt = rebuild_snapshot(env, cut, [TABLE], tmp_path / "rebuilt")
    assert rebuilt.digest == final["digest"]
    assert verify_snapshot(env, final["id"]).ok


# -- crashes at named steps (tidelog/crashpoints.py) -------------------------------------

ARCHIVE_POINTS = ("archive.log_before_rename", "archive.after_generation",
                  "archive.segment_before_rename", "archive.after_segment")
SNAPSHOT_POINTS = ("snapshot.before_manifest", "snapshot.manifest_in_build_dir",
                   "snapshot.after_publish", "catalog.before_publish", "catalog.after_public")


def _finish(proc: subprocess.Popen[bytes]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out.decode(), err.decode()


def _archived_offsets(env: Settings) -> list[int]:
    archive = Archive(env.archive_root)
    topic = f"{env.topic_prefix}.{TABLE}"
    gens = archive.generations(topic, 0)
    if not gens:
        return []
    segments = archive.segments(topic, 0, gens[-1].number)
    assert not archive.damaged(segments), "a crash left a segment that fails its checksum"
    for before, after in zip(segments, segments[1:], strict=False):
        assert before.end == after.start, "segments overlap or leave a gap"
    if not segments:
        return []
    frame = pl.concat([pl.read_parquet(s.path, columns=["__offset"]) for s in segments])
    return list(frame["__offset"])


@pytest.mark.parametrize("point", ARCHIVE_POINTS)
def test_archive_run_crashed_at_a_named_step_resumes_exactly_once(
        env: Settings, tmp_path: Path, point: str) -> None:
    from dataclasses import replace

    local = replace(env, archive_root=str(tmp_path / "archive"))
    code, _, err = _finish(_cli(local, "archive", "run", "--batch-size", "2000",
                                TIDELOG_CRASH_AT=point))
    assert code == 137, f"the archiver never reached {point}: {err}"
    # Old state or new: whatever is visible is whole, checksummed and gap-free.
    partial = _archived_offsets(local)
    assert partial == list(range(len(partial)))
    if point != "archive.after_segment":
        assert partial == [], f"a crash at {point} published a segment"
    code, _, err = _finish(_cli(local, "archive", "run", "--batch-size", "2000"))
    assert code == 0, err
    offsets = _archived_offsets(local)
    assert offsets and offsets == list(range(len(offsets))), "an offset is lost or doubled"
    assert offsets == _archived_offsets(env)[:len(offsets)]
    assert len(offsets) >= len(partial)
    assert not list(Path(local.archive_root).rglob(".tmp-*")), "a temporary file was left"


def _catalog_ids(env: Settings) -> set[str]:
    import duckdb

    from snapshotter.catalog import catalog_path

    with duckdb.connect(str(catalog_path(env)), read_only=True) as con:
        return {row[0] for row in con.execute("select id from tidelog.snapshots").fetchall()}


@pytest.mark.parametrize("point", SNAPSHOT_POINTS)
def test_snapshot_create_crashed_at_a_named_step_leaves_old_or_new(
        env: Settings, tmp_path: Path, point: str) -> None:
    import json
    from dataclasses import replace

    assert _finish(_cli(env, "archive", "run"))[0] == 0
    reference = json.loads(_finish(_cli(env, "snapshot", "create", "--tables", TABLE,
                                        "--full", "--json"))[1])
    local = replace(env, home=tmp_path / "home", snapshot_root=str(tmp_path / "snapshots"))
    cut = json.dumps(reference["cut"])
    code, _, err = _finish(_cli(local, "snapshot", "create", "--tables", TABLE, "--full",
                                "--at", cut, TIDELOG_CRASH_AT=point))
    assert code == 137, f"snapshot create never reached {point}: {err}"
    root = Path(local.snapshot_root)
    visible = [c for c in root.iterdir() if not c.name.startswith(".")]
    for child in visible:
        assert (child / MANIFEST_NAME).exists(), f"a crash at {point} left {child} partial"
    published = point.startswith("catalog.") or point == "snapshot.after_publish"
    assert [c.name for c in visible] == ([reference["id"]] if published else [])
    listed = [m.id for m in list_snapshots(local)]
    assert listed == [c.name for c in visible]
    # The next command repairs the catalog from the manifests, and the build is resumed
    # (or reused) to the same snapshot a run without a crash gives.
    code, out, err = _finish(_cli(local, "snapshot", "create", "--tables", TABLE, "--full",
                                  "--at", cut, "--json"))
    assert code == 0, err
    again = json.loads(out)
    assert (again["id"], again["digest"]) == (reference["id"], reference["digest"])
    assert [m.id for m in list_snapshots(local)] == [reference["id"]]
    assert _catalog_ids(local) == {reference["id"]}
    assert not [c for c in root.iterdir() if c.name.startswith((".tmp-", ".old-"))]
    code, out, err = _finish(_cli(local, "snapshot", "verify", reference["id"], "--json"))
    assert code == 0 and json.loads(out)["ok"], out + err


def test_full_rebuild_crashed_between_its_two_renames_restores_the_old_snapshot(
        env: Settings, tmp_path: Path) -> None:
    import json
    from dataclasses import replace

    local = replace(env, home=tmp_path / "home", snapshot_root=str(tmp_path / "snapshots"))
    first = json.loads(_finish(_cli(local, "snapshot", "create", "--tables", TABLE, "--full",
                                    "--json"))[1])
    cut = json.dumps(first["cut"])
    code, _, err = _finish(_cli(local, "snapshot", "create", "--tables", TABLE, "--full",
                                "--at", cut, TIDELOG_CRASH_AT="snapshot.old_set_aside"))
    assert code == 137, err
    root = Path(local.snapshot_root)
    assert (root / f".old-{first['id']}" / MANIFEST_NAME).exists()  # the old one, whole
    code, out, err = _finish(_cli(local, "snapshot", "create", "--tables", TABLE,
                                  "--at", cut, "--json"))
    assert code == 0, err
    assert json.loads(out)["digest"] == first["digest"]
    assert [m.id for m in list_snapshots(local)] == [first["id"]]
    assert not (root / f".old-{first['id']}").exists()
