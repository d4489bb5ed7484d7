"""The capture checks behind `--at latest`, on the shapes Connect and Debezium 3.6.3 return
(offsets and statuses as recorded from the real stack)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cdc import capture
from cdc.capture import capture_problems
from cdc.connector import ConnectorSpec, snapshot_in_progress
from snapshotter.freshness import refuse_if_stale
from tidelog.errors import CaptureStale, CutError
from tidelog.settings import Settings

INITIAL = {"last_snapshot_record": False, "lsn": 72395720, "txId": 779,
           "ts_usec": 1796110322996526, "snapshot": "INITIAL", "snapshot_completed": False}
INCREMENTAL = {"transaction_id": "799", "incremental_snapshot_correlation_id": "c2610f61",
               "lsn_proc": 72626496, "lsn_commit": 72626496, "lsn": 72626496, "txId": 799,
               "incremental_snapshot_collections": '[{"incremental_snapshot_collections_id":'
               '"public.bigsnap","incremental_snapshot_collections_additional_condition":null,'
               '"incremental_snapshot_collections_surrogate_key":null}]'}
STREAMING = {"lsn_proc": 27002216, "messageType": "COMMIT", "lsn_commit": 27002216,
             "lsn": 27002216, "txId": 774, "ts_usec": 1796110291130306}


def test_snapshot_state_from_the_source_offset() -> None:
    assert snapshot_in_progress(INITIAL) == "the initial snapshot"
    assert snapshot_in_progress(INCREMENTAL) == "an incremental snapshot of public.bigsnap"
    assert snapshot_in_progress(STREAMING) is None
    assert snapshot_in_progress({**INITIAL, "snapshot_completed": True}) is None
    assert snapshot_in_progress({}) is None


def test_refused_unless_allowed_and_then_recorded() -> None:
    assert refuse_if_stale([], ["public.t"], allow_stale=False) == ()
    with pytest.raises(CaptureStale, match="task 0 .* FAILED.*--allow-stale") as info:
        refuse_if_stale(["task 0 of connector c is FAILED: boom"], ["public.t"], False)
    assert isinstance(info.value, CutError)
    assert info.value.details["problems"] == ["task 0 of connector c is FAILED: boom"]
    assert refuse_if_stale(["lagging"], ["public.t"], allow_stale=True) == ("lagging",)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, connect_url="http://connect.invalid",
                    postgres_dsn="postgresql://u@db.invalid/x", connector_name="c")


def _fake_connect(monkeypatch: pytest.MonkeyPatch, status: dict[str, Any],
                  tables: tuple[str, ...], *offsets: dict[str, Any],
                  wal: int = 27002216) -> list[str]:
    """Connect and Postgres as the checks see them: the committed offsets come in turn
    (the last one repeats), the WAL is at `wal`."""
    calls: list[str] = []
    committed = list(offsets)
    monkeypatch.setattr(capture, "connector_status", lambda s, name: status)
    monkeypatch.setattr(capture, "current_tables", lambda c, name: tables)
    monkeypatch.setattr(capture, "source_offset",
                        lambda s, name: committed.pop(0) if len(committed) > 1 else committed[0])
    monkeypatch.setattr(capture, "_wal_position", lambda s: wal)
    monkeypatch.setattr(capture, "_probe", lambda s, spec: calls.append(f"probe {spec.name}"))
    monkeypatch.setattr(capture, "OFFSET_FLUSH_SECONDS", 0.01)

    def slot(_s: Settings, spec: ConnectorSpec, wait: float) -> str | None:
        calls.append(spec.slot_name)
        return None
    monkeypatch.setattr(capture, "_slot_behind", slot)
    return calls


RUNNING = {"connector": {"state": "RUNNING"}, "tasks": [{"id": 0, "state": "RUNNING"}]}


def test_a_failed_task_is_named_with_its_cause(settings: Settings,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    trace = ("org.apache.kafka.connect.errors.ConnectException: x\n"
             "Caused by: java.lang.NumberFormatException: For input string: \"2562047788\"")
    status = {"connector": {"state": "RUNNING"},
              "tasks": [{"id": 0, "state": "FAILED", "trace": trace}]}
    calls = _fake_connect(monkeypatch, status, ("public.t",), STREAMING)
    [problem] = capture_problems(settings, ConnectorSpec("c", ("public.t",), "c"))
    assert "task 0 of connector c is FAILED" in problem and "NumberFormatException" in problem
    assert calls == []  # no slot wait once a task is known to be down


def test_open_snapshot_and_missing_table_are_reasons(settings: Settings,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_connect(monkeypatch, RUNNING, ("public.t",), INCREMENTAL, wal=72626496)
    [problem] = capture_problems(settings, ConnectorSpec("c", ("public.t",), "c"))
    assert "incremental snapshot of public.bigsnap" in problem
    _fake_connect(monkeypatch, RUNNING, ("public.t",), STREAMING)
    [problem] = capture_problems(settings, ConnectorSpec("c", ("public.t", "public.u"), "c"))
    assert "does not capture public.u" in problem


def test_current_capture_checks_the_slot(settings: Settings,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_connect(monkeypatch, RUNNING, ("public.t",), STREAMING)
    assert capture_problems(settings, ConnectorSpec("c-1", ("public.t",), "c")) == []
    assert calls == ["c_1"]


def test_an_offset_behind_the_slot_is_waited_for(settings: Settings,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The race behind a stale 'latest' after a DDL refresh: the slot has confirmed the
    refresh signal, the offsets topic still holds an offset from before it. The check
    waits for an offset past the WAL position it started at, which shows the snapshot."""
    before = {**STREAMING, "lsn": 72000000}
    _fake_connect(monkeypatch, RUNNING, ("public.t",), before, before, INCREMENTAL,
                  wal=72626000)
    [problem] = capture_problems(settings, ConnectorSpec("c", ("public.t",), "c"))
    assert "incremental snapshot of public.bigsnap" in problem
    # an offset that never gets there is a reason too, never a silent pass
    _fake_connect(monkeypatch, RUNNING, ("public.t",), before, wal=72626000)
    [problem] = capture_problems(settings, ConnectorSpec("c", ("public.t",), "c"), wait=0.05)
    assert "has not committed an offset at or past 0/4542F50" in problem
