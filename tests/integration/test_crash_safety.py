"""SIGKILL of the archiver and of `snapshot create` at random moments: never a partial
snapshot, never a duplicated or skipped offset; reruns give the same digests."""

from __future__ import annotations

import os
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
from tests.integration.cdc_helpers import execute, private_settings, unique_name, wait_for_events
from tidelog.settings import Settings

pytestmark = pytest.mark.integration

TABLE = "public.crash_snap"
ROWS = 40_000


def _cli(env: Settings, *args: str) -> subprocess.Popen[bytes]:
    environ = {
        **os.environ,
        "TIDELOG_HOME": str(env.home),
        "TIDELOG_POSTGRES_DSN": env.postgres_dsn,
        "TIDELOG_BOOTSTRAP_SERVERS": env.bootstrap_servers,
        "TIDELOG_CONNECT_URL": env.connect_url,
        "TIDELOG_MLFLOW_URI": env.mlflow_uri,
        "TIDELOG_TOPIC_PREFIX": env.topic_prefix,
        "TIDELOG_CONNECTOR_NAME": env.connector_name,
        "TIDELOG_ARCHIVE_ROOT": env.archive_root,
        "TIDELOG_SNAPSHOT_ROOT": env.snapshot_root,
    }
    return subprocess.Popen([sys.executable, "-m", "tidelog.cli", *args], env=environ,
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
        assert verify_snapshot(env, base["id"])["ok"], "a killed build damaged its base"
    assert kills >= 1, "every build finished before the kill; nothing was tested"
    final_out, err = _cli(env, "snapshot", "create", "--tables", TABLE, "--at",
                          json.dumps(cut.to_json()), "--json").communicate(timeout=300)
    final = json.loads(final_out or b"{}") or pytest.fail(err.decode())
    assert final["built_from"] == base["id"]
    rebuilt = rebuild_snapshot(env, cut, [TABLE], tmp_path / "rebuilt")
    assert rebuilt.digest == final["digest"]
    assert verify_snapshot(env, final["id"])["ok"]
