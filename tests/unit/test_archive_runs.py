"""The archiver decodes each fetched batch as it arrives and merges the runs per segment:
the segments hold the same rows, in the same order, as decoding everything at once."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

from cdc.reader import RawMessage
from snapshotter.archiving import _default_decoder, _merge_runs
from snapshotter.materialise import materialise

RECORDED = Path(__file__).resolve().parents[1] / "fixtures" / "recorded"


def recorded_table_messages() -> list[RawMessage]:
    """r, u, c, d, tombstone, c, d, tombstone, t: as Debezium 3.6.3 sent them."""
    messages = []
    for path in sorted(RECORDED.glob("rec_public_t1_*.json")):
        doc = json.loads(path.read_text())
        key, value = doc["key"], doc["value"]
        messages.append(RawMessage(doc["topic"], doc["partition"], doc["offset"],
                                   None if key is None else key.encode(),
                                   None if value is None else value.encode(), 0))
    return messages


@pytest.mark.parametrize("chunk", range(1, 10))
def test_chunked_decode_gives_the_table_of_one_decode(chunk: int) -> None:
    messages = recorded_table_messages()
    assert len(messages) == 9
    whole = pa.concat_tables(t for t, _first, _last in _default_decoder(messages))
    runs = []
    for i in range(0, len(messages), chunk):
        runs.extend(_default_decoder(messages[i:i + chunk]))
    # Tombstone-only chunks (chunk 1) join their neighbours: one segment, like one decode.
    [(table, last)] = _merge_runs(runs)
    assert last == messages[-1].offset
    assert table.equals(whole)
    assert table.schema.equals(whole.schema, check_metadata=True)


def test_a_schema_change_starts_a_new_segment() -> None:
    messages = recorded_table_messages()[:3]
    first = _default_decoder(messages[:2])
    changed = [(t.drop_columns([t.column_names[-1]]), f, last)
               for t, f, last in _default_decoder(messages[2:])]
    segments = _merge_runs(first + changed)
    assert [last for _t, last in segments] == [messages[1].offset, messages[2].offset]
    assert [t.num_rows for t, _ in segments] == [2, 1]


def test_a_leading_tombstone_run_takes_the_columns_of_the_next() -> None:
    messages = recorded_table_messages()[4:6]  # tombstone, then c
    assert messages[0].value is None
    [(whole, _first, _last)] = _default_decoder(messages)
    runs = _default_decoder(messages[:1]) + _default_decoder(messages[1:])
    [(table, last)] = _merge_runs(runs)
    assert last == messages[-1].offset
    assert table.equals(whole) and table.schema.equals(whole.schema, check_metadata=True)


def _state_of(flushes: list[list[RawMessage]], base: pl.DataFrame | None = None
              ) -> pl.DataFrame:
    """The state from segments written flush by flush, as the archiver writes them."""
    segments = [table for chunk in flushes
                for table, _ in _merge_runs(_default_decoder(chunk))]
    frames = [pl.from_arrow(t) for t in segments]
    return materialise([f.lazy() for f in frames if isinstance(f, pl.DataFrame)],
                       base=base, keep_key=True)


def test_a_tombstone_flushed_alone_drops_no_column() -> None:
    """An archive run that stops between Debezium's delete and its tombstone writes a
    segment of the tombstone alone, without data columns; it must not count as a schema
    that dropped every column (which emptied every earlier row's values)."""
    msgs = recorded_table_messages()
    tombstone = next(i for i, m in enumerate(msgs) if m.value is None)
    whole = _state_of([msgs[:tombstone + 1], msgs[tombstone + 1:tombstone + 2]])
    split = _state_of([msgs[:tombstone], msgs[tombstone:tombstone + 1],
                       msgs[tombstone + 1:tombstone + 2]])
    assert split.height == whole.height > 0
    assert split.drop("__salt", strict=False).equals(whole.drop("__salt", strict=False))
    # on a base with no other events: the base's columns, not none
    only_tombstone = _state_of([msgs[tombstone:tombstone + 1]], base=whole)
    assert only_tombstone.columns == whole.columns
    assert only_tombstone.drop("__salt", strict=False).equals(
        whole.drop("__salt", strict=False))
