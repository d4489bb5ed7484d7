"""`cdc.reader.read_range` over an in-memory consumer: bounded and open-ended reads,
partition EOF, the patience horizon, retention and a silent broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdc.reader import read_range
from tests.unit.fakes import FakeConsumer
from tidelog.errors import BrokerUnreachable, CutError
from tidelog.settings import Settings

A, B = ("shop.public.a", 0), ("shop.public.b", 0)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, bootstrap_servers="fake:9092")


def _logs(n_a: int, n_b: int) -> dict[tuple[str, int], list[bytes]]:
    return {A: [f"a{i}".encode() for i in range(n_a)],
            B: [f"b{i}".encode() for i in range(n_b)]}


def _offsets(batches: list[list]) -> dict[tuple[str, int], list[int]]:  # type: ignore[type-arg]
    seen: dict[tuple[str, int], list[int]] = {}
    for batch in batches:
        for m in batch:
            seen.setdefault((m.topic, m.partition), []).append(m.offset)
    return seen


def test_a_bounded_read_stops_exactly_at_each_end(settings: Settings,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeConsumer(_logs(10, 10)).install(monkeypatch)
    batches = list(read_range(settings, {A: 2, B: 0}, {A: 7, B: 4}, batch_size=5))
    assert _offsets(batches) == {A: [2, 3, 4, 5, 6], B: [0, 1, 2, 3]}
    assert all(len(b) <= 5 for b in batches) and fake.closed
    values = {m.offset: m.value for b in batches for m in b if (m.topic, m.partition) == A}
    assert values[2] == b"a2" and values[6] == b"a6"


def test_nothing_to_read_opens_no_consumer(settings: Settings,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeConsumer(_logs(3, 3)).install(monkeypatch)
    assert list(read_range(settings, {A: 3}, {A: 3})) == []
    assert fake.positions == {} and not fake.closed


def test_an_open_read_ends_at_partition_eof(settings: Settings,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    FakeConsumer(_logs(4, 6)).install(monkeypatch)
    batches = list(read_range(settings, {A: 1, B: 0}))
    assert _offsets(batches) == {A: [1, 2, 3], B: [0, 1, 2, 3, 4, 5]}


def test_without_eof_an_open_read_stops_at_the_horizon_after_patience(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeConsumer(_logs(5, 2), eof=False).install(monkeypatch)
    reader = read_range(settings, {A: 0}, eof_patience=0.0)
    first = next(reader)
    fake.logs[A].extend([b"late-1", b"late-2"])  # written after the read began
    rest = list(reader)
    # Past patience the read stops at the end the broker reported when it began: 5.
    assert _offsets([first, *rest]) == {A: [0, 1, 2, 3, 4]}


def test_offsets_trimmed_by_retention_are_a_cut_error(settings: Settings,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    FakeConsumer(_logs(5, 5), first={A: 3}).install(monkeypatch)
    with pytest.raises(CutError, match=r"offset 1 of shop.public.a\[0\] is no longer on the "
                                       r"broker .* read it from the archive"):
        list(read_range(settings, {A: 1}, {A: 5}))


def test_a_broker_that_sends_nothing_is_reported_not_waited_on_forever(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    FakeConsumer(_logs(2, 0), eof=False).install(monkeypatch)
    with pytest.raises(BrokerUnreachable, match=r"no progress reading .* from fake:9092"):
        list(read_range(settings, {A: 0}, {A: 5}, idle_timeout=0.2))
