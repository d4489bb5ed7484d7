"""A change event that cannot be decoded stops only its own partition, at its offset, and
is recorded in the archive until a later run decodes past it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pytest

from cdc.reader import LogIdentity, RawMessage
from snapshotter import archiving as archive_module
from snapshotter.archive import Archive
from snapshotter.archiving import _default_decoder, archive_topics, run_archiver
from tests.unit.test_archive_runs import recorded_table_messages
from tidelog.errors import DecodeError, PoisonEventError
from tidelog.settings import Settings

GOOD, BAD = "pfx.public.good", "pfx.public.bad"


def _on(topic: str, messages: list[RawMessage]) -> list[RawMessage]:
    return [dataclasses.replace(m, topic=topic, offset=i) for i, m in enumerate(messages)]


@pytest.fixture
def fake_broker(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[RawMessage]]:
    """Two topics of recorded Debezium messages, served as the reader would serve them."""
    logs = {GOOD: _on(GOOD, recorded_table_messages()), BAD: _on(BAD, recorded_table_messages())}

    def log_identity(_settings: Settings, topics: list[str]) -> dict[str, LogIdentity]:
        return {t: LogIdentity("cluster", f"id-{t}") for t in topics}

    def list_partitions(_settings: Settings, topics: list[str]) -> list[tuple[str, int]]:
        return [(t, 0) for t in topics]

    def read_range(_settings: Settings, start: dict[tuple[str, int], int], **_: object
                   ) -> Iterator[list[RawMessage]]:
        for (topic, _p), offset in sorted(start.items()):
            yield [m for m in logs[topic] if m.offset >= offset]

    monkeypatch.setattr(archive_module, "log_identity", log_identity)
    monkeypatch.setattr(archive_module, "list_partitions", list_partitions)
    monkeypatch.setattr(archive_module, "read_range", read_range)
    return logs


def poisoned_at(topic: str, offset: int):  # type: ignore[no-untyped-def]
    """A decoder that cannot decode one event, as a type tidelog cannot carry would."""
    def decoder(messages: Sequence[RawMessage]) -> list[tuple[pa.Table, int, int]]:
        for m in messages:
            if m.topic == topic and m.offset == offset:
                raise DecodeError(f"cannot decode {topic}[0]@{offset}: column 'n' (numeric "
                                  "-> decimal128(10, 2)): cannot convert 'NAN'",
                                  topic=topic, partition=0, offset=offset, column="n",
                                  pg_type="numeric")
        return _default_decoder(messages)
    return decoder


def settings_for(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, bootstrap_servers="fake:9092",
                    archive_root=str(tmp_path / "archive"))


def test_poison_stops_its_partition_at_the_offset_and_others_archive(
        fake_broker: dict[str, list[RawMessage]], tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    archive = Archive(settings.archive_root)
    marks = archive_topics(settings, [GOOD, BAD], decoder=poisoned_at(BAD, 3), archive=archive)
    assert marks[(GOOD, 0)] == 9  # every event of the healthy topic
    assert marks[(BAD, 0)] == 3  # everything before the poison event, nothing after
    [failure] = archive.failures()
    assert (failure.topic, failure.partition, failure.offset) == (BAD, 0, 3)
    assert failure.column == "n" and failure.pg_type == "numeric"
    assert "NAN" in failure.error and failure.attempts == 1
    # The value as Debezium sent it, read from the event itself.
    assert failure.value == '"99999999.99"'
    rows = {(r["topic"], r["partition"]): r for r in archive.status()}
    assert rows[(BAD, 0)]["failure"]["offset"] == 3  # type: ignore[index]
    assert rows[(GOOD, 0)]["failure"] is None

    # A later run stops at the same offset again (never skips it) and counts the attempt.
    again = archive_topics(settings, [GOOD, BAD], decoder=poisoned_at(BAD, 3),
                           archive=archive)
    assert again[(BAD, 0)] == 3
    assert archive.failures()[0].attempts == 2

    # Once the event decodes (a fixed tidelog), the partition catches up and the record goes.
    healed = archive_topics(settings, [GOOD, BAD], archive=archive)
    assert healed[(BAD, 0)] == 9
    assert archive.failures() == []


def test_undecodable_without_location_is_found_by_decoding_one_at_a_time(
        fake_broker: dict[str, list[RawMessage]], tmp_path: Path) -> None:
    def decoder(messages: Sequence[RawMessage]) -> list[tuple[pa.Table, int, int]]:
        if any(m.offset == 5 for m in messages):
            raise pa.ArrowInvalid("Decimal precision out of range")
        return _default_decoder(messages)

    settings = settings_for(tmp_path)
    archive = Archive(settings.archive_root)
    marks = archive_topics(settings, [BAD], decoder=decoder, archive=archive)
    assert marks[(BAD, 0)] == 5
    [failure] = archive.failures()
    assert failure.offset == 5 and "ArrowInvalid" in failure.error


def test_run_archiver_archives_the_rest_then_stops_loudly(
        fake_broker: dict[str, list[RawMessage]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_for(tmp_path)
    original = archive_module.archive_topics
    monkeypatch.setattr(archive_module, "archive_topics",
                        lambda *a, **k: original(*a, decoder=poisoned_at(BAD, 3), **k))
    seen: list[object] = []
    with pytest.raises(PoisonEventError, match=r"pfx.public.bad\[0\] offset 3, column 'n'"):
        run_archiver(settings, [GOOD, BAD], follow=False, report=seen.append)
    assert seen == [{(GOOD, 0): 9, (BAD, 0): 3}]  # reported before the stop
