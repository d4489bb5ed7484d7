"""Tables of one snapshot built at once (snapshotter/writers.py): the memory budget is
shared out, a failure stops the build and leaves nothing, and the result is the same as
building one table after another."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import pytest

import snapshotter.writers as writers
from snapshotter.cut import Cut
from snapshotter.manifest import TableManifest
from snapshotter.snapshots import create_snapshot
from tests.unit.test_snapshot_layout import History
from tests.unit.test_snapshot_layout import _settings as layout_settings
from tidelog.errors import ArchiveError

MIB = 1 << 20
TABLES = ["public.a", "public.b", "public.c"]


@pytest.mark.parametrize(("cpus", "megabytes", "tables", "expected"), [
    (4, None, 8, (2, 2048)),  # the default 4096 MiB: two shares of at least 1536
    (4, 8192, 8, (4, 2048)),
    (4, 8192, 3, (3, 8192 // 3)),
    (2, 8192, 8, (2, 4096)),
    (4, 1536, 8, (1, 1536)),  # the smallest budget is one build's
    (8, 65536, 8, (writers.MAX_WORKERS, 65536 // writers.MAX_WORKERS)),
    (4, 8192, 1, (1, 8192)),
])
def test_the_memory_budget_is_shared_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         cpus: int, megabytes: int | None, tables: int,
                                         expected: tuple[int, int]) -> None:
    monkeypatch.setattr(writers.os, "cpu_count", lambda: cpus)
    settings = dataclasses.replace(layout_settings(tmp_path), snapshot_memory_mb=megabytes)
    workers, share = writers.build_workers(settings, tables)
    assert (workers, share // MIB) == expected


def test_builds_run_at_once_and_keep_table_order() -> None:
    both_running = threading.Barrier(2, timeout=10)  # broken unless two builds overlap

    def build(table: str) -> TableManifest:
        both_running.wait()
        return table  # type: ignore[return-value]

    assert list(writers.build_each(build, ["b", "a"], 2)) == ["b", "a"]


def test_the_first_failure_in_table_order_is_raised_and_no_later_build_starts() -> None:
    started: list[str] = []
    gate = threading.Event()

    def build(table: str) -> TableManifest:
        started.append(table)
        if table == "t0":
            gate.wait(10)
            raise ValueError("t0 broke")
        if table == "t1":
            gate.set()
            raise KeyError("t1 broke")
        time.sleep(0.05)
        return table  # type: ignore[return-value]

    with pytest.raises(ValueError, match="t0 broke"):
        writers.build_each(build, [f"t{n}" for n in range(50)], 2)
    assert len(started) <= 4  # the rest never started


def test_no_table_starts_after_a_failure_while_an_earlier_one_runs() -> None:
    """A disk that is full fails the next table at once; the first, slow table must
    not keep the others starting (found in review)."""
    started: list[str] = []
    slow_done = threading.Event()

    def build(table: str) -> TableManifest:
        started.append(table)
        if table == "a":
            slow_done.wait(10)
            return table  # type: ignore[return-value]
        if table == "b":
            raise OSError(28, "No space left on device")
        time.sleep(0.3)
        return table  # type: ignore[return-value]

    timer = threading.Timer(1.5, slow_done.set)
    timer.start()
    try:
        with pytest.raises(OSError, match="No space left"):
            writers.build_each(build, list("abcdefgh"), 2)
    finally:
        timer.cancel()
    assert started[:2] == ["a", "b"] and len(started) <= 3


def test_ctrl_c_stops_the_builds_within_a_second() -> None:
    import signal

    started: list[str] = []
    release = threading.Event()

    def build(table: str) -> TableManifest:
        started.append(table)
        release.wait(10)
        return table  # type: ignore[return-value]

    def interrupt(signum: int, frame: object) -> None:
        release.set()  # the running builds finish their step
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.3)
    began = time.perf_counter()
    try:
        with pytest.raises(KeyboardInterrupt):
            writers.build_each(build, list("abcdef"), 2)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert time.perf_counter() - began < 3
    assert started == ["a", "b"]  # the ones running; no other started


def _histories(settings: object) -> list[History]:
    histories = []
    for number, table in enumerate(TABLES):
        history = History(settings, table).seed(50 + 10 * number)  # type: ignore[arg-type]
        histories.append(history)
    return histories


@pytest.mark.parametrize("incremental", [False, True])
def test_tables_built_at_once_equal_tables_built_in_turn(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, incremental: bool) -> None:
    monkeypatch.setattr(writers.os, "cpu_count", lambda: 4)
    archived = dataclasses.replace(layout_settings(tmp_path), snapshot_memory_mb=8192)
    histories = _histories(archived)
    first = _cut(histories)
    for history in histories:
        history.event("u", 1, v=-1.0, name="changed")
        history.event("d", 2)
    second = _cut(histories)
    results = {}
    for workers in (1, 3):  # the same archive, into two snapshot roots
        monkeypatch.setattr(writers, "MAX_WORKERS", workers)
        settings = dataclasses.replace(archived,
                                       snapshot_root=str(tmp_path / f"snapshots-{workers}"))
        base = create_snapshot(settings, TABLES, first, catch_up=False)
        manifest = create_snapshot(settings, TABLES, second, catch_up=False,
                                   incremental=incremental)
        assert (manifest.built_from == base.id) is incremental
        for table, history in zip(TABLES, histories, strict=True):
            rows = manifest_rows(settings, manifest.id, table)
            assert {r["id"]: r["name"] for r in rows} == \
                {k: v["name"] for k, v in history.state.items()}
        results[workers] = manifest
    one, three = results[1], results[3]
    assert {t: m.digest for t, m in one.tables.items()} == \
        {t: m.digest for t, m in three.tables.items()}
    assert one.digest == three.digest


def _cut(histories: list[History]) -> Cut:
    cuts = [h.cut() for h in histories]
    return dataclasses.replace(cuts[0], partitions=tuple(p for c in cuts for p in c.partitions))


def manifest_rows(settings: object, sid: str, table: str) -> list[dict[str, object]]:
    from snapshotter.snapshots import open_snapshot

    return open_snapshot(settings, sid).table(table).to_dicts()  # type: ignore[arg-type]


def test_a_failing_table_fails_the_snapshot_and_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writers.os, "cpu_count", lambda: 4)
    settings = dataclasses.replace(layout_settings(tmp_path), snapshot_memory_mb=8192)
    histories = _histories(settings)
    cut = _cut(histories)
    damaged = max((p for p in Path(settings.archive_root).rglob("*.parquet")
                   if ".public.b" in str(p)), key=lambda p: p.name)
    damaged.write_bytes(damaged.read_bytes()[:40])
    with pytest.raises(ArchiveError, match="tidelog archive verify"):
        create_snapshot(settings, TABLES, cut, catch_up=False)
    root = Path(settings.snapshot_root)
    assert [p.name for p in root.iterdir() if not p.name.startswith(".lock-")] == []
