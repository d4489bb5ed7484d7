"""Manifests are parsed once per file version (snapshotter/store.py): a listing reads
every manifest, and a snapshot lists three times."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

import snapshotter.store as store
from snapshotter.manifest import MANIFEST_NAME, Manifest
from snapshotter.snapshots import create_snapshot
from tests.unit.test_snapshot_layout import History, _settings
from tidelog.errors import SnapshotNotFound


def test_a_manifest_is_parsed_again_only_when_its_file_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(tmp_path)
    history = History(settings, "public.items").seed(20)
    built = create_snapshot(settings, ["public.items"], history.cut(), catch_up=False)
    snapshots = store.SnapshotStore.of(settings)
    parsed: list[str] = []
    loads = Manifest.loads
    monkeypatch.setattr(Manifest, "loads", classmethod(
        lambda cls, text, where="manifest": (parsed.append(where), loads(text, where))[1]))
    path = snapshots.path(built.id) / MANIFEST_NAME
    store._PARSED.clear()
    assert snapshots.manifests() == [built]
    assert snapshots.manifest(built.id) == built
    assert parsed == [str(path)]  # the second read took the parsed one

    # Replaced whole, as publish and erasure do: a new file renamed onto it.
    changed = dataclasses.replace(built, built_from="elsewhere")
    tmp = path.with_name(".manifest.tmp")
    tmp.write_text(changed.dumps())
    os.replace(tmp, path)
    assert snapshots.manifest(built.id) == changed
    # Rewritten in place (by hand): its size and times change.
    path.write_text(built.dumps() + "\n")
    assert snapshots.manifest(built.id) == built
    assert len(parsed) == 3

    path.unlink()
    with pytest.raises(SnapshotNotFound):
        snapshots.manifest(built.id)
