"""An incremental snapshot reuses, untouched, every table with no events since its base."""

from __future__ import annotations

import random
from pathlib import Path

from snapshotter.cut import Cut
from snapshotter.snapshots import create_snapshot
from tests.unit.test_snapshot_layout import History, _assert_same_as_full, _settings


def test_unchanged_table_keeps_its_base_files_and_digest(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    busy = History(settings, "public.busy").seed(500)
    quiet = History(settings, "public.quiet").seed(300)
    tables = ["public.busy", "public.quiet"]

    def cut() -> Cut:
        a, b = busy.cut(), quiet.cut()
        return Cut(a.partitions + b.partitions, lsn=max(a.lsn or 0, b.lsn or 0))

    first = create_snapshot(settings, tables, cut(), catch_up=False)
    rng = random.Random(3)
    for key in rng.sample(range(500), 5):
        busy.event("u", key, v=-1.0, name="changed")
    second = create_snapshot(settings, tables, cut(), catch_up=False)
    assert second.built_from == first.id
    for key in rng.sample(range(500), 5):
        busy.event("d", key)
    third = create_snapshot(settings, tables, cut(), catch_up=False)
    assert third.built_from == second.id

    before, after = first.tables["public.quiet"], third.tables["public.quiet"]
    assert after.files == before.files and not after.layered
    assert after.digest == before.digest and after.checksums == before.checksums
    root = Path(settings.snapshot_root)
    assert ((root / third.id / after.files[0]).stat().st_ino
            == (root / first.id / before.files[0]).stat().st_ino)  # shared, not rewritten
    # the layered busy table keeps its base's deletes when it is unchanged, too
    assert third.tables["public.busy"].delete_files
    quiet.event("u", 7, v=0.5, name="now changed")
    fourth = create_snapshot(settings, tables, cut(), catch_up=False)
    assert fourth.tables["public.busy"].files == third.tables["public.busy"].files
    assert fourth.tables["public.busy"].digest == third.tables["public.busy"].digest
    assert fourth.tables["public.quiet"].digest != after.digest
    for manifest in (second, third, fourth):
        _assert_same_as_full(settings, tmp_path / manifest.id, manifest)
