"""pgbench plus deletes and key changes: snapshots at marked moments equal Postgres then."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import psycopg
import pytest

from cdc.connector import ConnectorSpec, apply
from snapshotter.snapshots import create_snapshot, open_snapshot, rebuild_snapshot
from tests.integration.cdc_helpers import source_rows, unique_name, wait_for_events
from tests.integration.test_pgbench_and_crash import CUSTOM_SCRIPT, KEYED_TABLES
from tidelog.settings import Settings
from tidelog.stack.postgres import pg_bin

pytestmark = pytest.mark.integration


def _pgbench(dsn: str, *args: str) -> None:
    url = urlparse(dsn)
    cmd = [pg_bin("pgbench"), "-h", url.hostname or "", "-p", str(url.port), "-U",
           "postgres", *args, url.path.lstrip("/")]
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def _state(dsn: str, table: str) -> list[dict[str, object]]:
    with psycopg.connect(dsn) as conn:
        return source_rows(conn, table, order_by_first=True)


def test_snapshots_at_marked_moments(settings: Settings, tmp_path: Path) -> None:
    name = unique_name("pgb")
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        conn.execute(f"drop database if exists {name}")
        conn.execute(f"create database {name}")
    dsn = urlunparse(urlparse(settings.postgres_dsn)._replace(path=f"/{name}"))
    env = dataclasses.replace(settings, postgres_dsn=dsn, topic_prefix=name,
                              connector_name=name, home=tmp_path,
                              archive_root=str(tmp_path / "archive"),
                              snapshot_root=str(tmp_path / "snapshots"))
    _pgbench(dsn, "-i", "-s", "1", "-q")
    apply(env, ConnectorSpec(name, tuple(KEYED_TABLES), name), timeout=180)
    script = tmp_path / "changes.sql"
    script.write_text(CUSTOM_SCRIPT)
    moments = []
    for n in range(3):
        _pgbench(dsn, "-c", "2", "-t", "150", "-b", "tpcb-like@3", "-f", f"{script}@1")
        marker = f"marker {n}"
        # the marker transaction marks the moment; once it is archived, so is all before it
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("update pgbench_branches set filler = %s where bid = 1", (marker,))
        wait_for_events(env, f"{name}.public.pgbench_branches", lambda ev, m=marker: any(
            e.after and (e.after.get("filler") or "").startswith(m) for e in ev), timeout=120)
        expected = {t: _state(dsn, t) for t in KEYED_TABLES}
        manifest = create_snapshot(env, KEYED_TABLES, "latest")
        for table in KEYED_TABLES:
            frame = open_snapshot(env, manifest.id).table(table)
            got = frame.sort(frame.columns[0]).to_dicts()
            assert len(got) == len(expected[table]), (n, table)
            assert got == expected[table], (n, table)
        moments.append(manifest)
    assert moments[1].built_from == moments[0].id  # incremental
    for manifest in moments:
        rebuilt = rebuild_snapshot(env, manifest.cut, KEYED_TABLES, tmp_path / "rebuilt")
        assert rebuilt.digest == manifest.digest, "full rebuild differs from incremental"
