"""cdc.events: Debezium messages -> ChangeEvent / TransactionEvent / Heartbeat -> archive table.

Hand-written envelopes live in tests/fixtures/envelopes (real Debezium 3.6.3 shape, key and
value as JSON objects); recorded ones in tests/fixtures/recorded (key and value as the raw
JSON text). Both are {"topic", "partition", "offset", "key", "value"}.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import duckdb
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cdc.columns import METADATA_COLUMNS
from cdc.events import (
    ChangeEvent,
    Heartbeat,
    TransactionEvent,
    decode_any,
    decode_message,
    decode_transaction,
    events_to_arrow,
    split_by_schema,
)
from cdc.types import PG_TYPE_KEY
from tidelog.errors import DecodeError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ENVELOPES = FIXTURES / "envelopes"
RECORDED = FIXTURES / "recorded"

Message = tuple[str, int, int, bytes | None, bytes | None]


def _as_bytes(part: Any) -> bytes | None:
    if part is None:
        return None
    if isinstance(part, str):  # recorded: the raw JSON text
        return part.encode()
    return orjson.dumps(part)  # hand-written: compact, like JsonConverter


def load(path: Path) -> Message:
    doc = json.loads(path.read_text(encoding="utf-8"))
    return (doc["topic"], doc["partition"], doc["offset"], _as_bytes(doc["key"]),
            _as_bytes(doc["value"]))


def envelope(name: str) -> Message:
    return load(ENVELOPES / f"{name}.json")


ORDERS = [load(p) for p in sorted(ENVELOPES.glob("orders_*.json"))]
RECORDED_FILES = sorted(RECORDED.glob("*.json")) if RECORDED.is_dir() else []


def change(name: str, typed: bool = True) -> ChangeEvent:
    ev = decode_message(*envelope(name), typed=typed)
    assert isinstance(ev, ChangeEvent)
    return ev


# --------------------------------------------------------------------------- fixtures


@pytest.mark.parametrize("path", sorted(ENVELOPES.glob("*.json")), ids=lambda p: p.stem)
def test_every_hand_written_envelope_decodes(path: Path) -> None:
    assert decode_any(*load(path)) is not None


@pytest.mark.parametrize("path", RECORDED_FILES, ids=lambda p: p.stem)
def test_every_recorded_message_decodes(path: Path) -> None:
    result = decode_any(*load(path))
    assert isinstance(result, ChangeEvent | TransactionEvent | Heartbeat)


def test_recorded_table_topics_build_archive_tables() -> None:
    by_topic: dict[str, list[Message]] = {}
    for path in RECORDED_FILES:
        msg = load(path)
        by_topic.setdefault(msg[0], []).append(msg)
    for topic, messages in by_topic.items():
        messages.sort(key=lambda m: (m[1], m[2]))
        table = events_to_arrow(messages)
        kinds = {type(decode_any(*m)) for m in messages}
        if ChangeEvent in kinds:
            assert table.num_rows == len(messages), topic
        else:
            assert table.num_rows == 0, topic  # transaction and heartbeat topics hold no rows


# --------------------------------------------------------------------------- change events


def test_snapshot_read() -> None:
    ev = change("orders_000_r_snapshot")
    assert (ev.op, ev.key, ev.table, ev.tombstone) == ("r", {"id": 1}, "shop.orders", False)
    assert (ev.topic, ev.partition, ev.offset) == ("dbz.shop.orders", 0, 0)
    assert (ev.lsn, ev.txid, ev.transaction_id) == (49999000, 880, None)
    assert ev.ts_ms == 1709300000000
    assert ev.commit_time == datetime(2024, 3, 1, 13, 33, 20, 123, tzinfo=UTC)  # source.ts_us
    assert ev.before is None
    after = ev.after
    assert after is not None
    assert after["price"] == Decimal("19.90") and str(after["price"]) == "19.90"
    assert str(after["amount"]) == "0.5000"
    assert after["created"] == datetime(2024, 3, 1, 12, 34, 56, 789012, tzinfo=UTC)
    assert after["local_ts"] == datetime(2024, 3, 1, 12, 34, 56, 789012)
    assert after["ms_ts"] == datetime(2024, 3, 1, 12, 34, 56, 789000)
    assert after["day"] == date(2024, 3, 1)
    assert after["doc"] == {"a": 1, "b": [True, None]}
    assert after["uid"] == UUID("0a11e885-573b-4e0b-9ec5-ca99b491bc74")
    assert after["blob"] == bytes.fromhex("deadbeef")
    assert after["ints"] == [1, 2, 3] and after["tags"] == ["a", "b"]
    assert after["amounts"] == [Decimal("1.500"), Decimal("-2.000")]
    assert after["days"] == [date(1970, 1, 1), date(1969, 12, 31)]
    assert after["bits"] == "101"  # bit(3): the declared length keeps leading zeros
    assert after["pt"]["x"] == 1.5
    assert ev.key_json == '{"id":1}'


def test_snapshot_row_of_nulls() -> None:
    after = change("orders_001_r_nulls").after
    assert after is not None
    assert {k for k, v in after.items() if v is not None} == {"id", "flag"}


def test_insert_with_edge_values() -> None:
    ev = change("orders_002_c_edge_values")
    assert (ev.op, ev.transaction_id, ev.txid, ev.lsn) == ("c", "900:50000100", 900, 50000100)
    after = ev.after
    assert after is not None
    assert after["name"] == "👩\u200d🔬 e\u0301 日本語 עברית"
    # empty and blank are not NULL; char(n) drops trailing blanks, as Postgres's ::text does
    assert after["code"] == "" and after["ch"] == ""
    assert str(after["price"]) == "-9999999999.90"
    assert str(after["amount"]) == "123456789012345678901234567890.1230000"
    assert after["created"] == datetime(1901, 12, 13, 20, 45, 52, 1, tzinfo=UTC)
    assert after["local_ts"] == datetime(1900, 1, 1)
    assert after["day"] == date(1900, 2, 28)
    assert after["ratio"] != after["ratio"] and after["score"] == float("-inf")
    assert after["doc"]["big"] == 123456789012345678901234567890
    assert after["ints"] == [None, -1, 2147483647]
    assert after["tags"] == ["", None, "a,b", 'quote"d']


def test_update_carries_before_and_after() -> None:
    ev = change("orders_003_u_with_before")
    assert ev.op == "u"
    assert ev.before is not None and ev.after is not None
    assert str(ev.before["price"]) == "-9999999999.90"
    assert str(ev.after["price"]) == "0.00"
    assert ev.after["created"] == datetime.max.replace(tzinfo=UTC)  # 'infinity'
    assert ev.after["local_ts"] == datetime.max
    assert ev.after["day"] == date.max
    assert ev.raw_after is not None and ev.raw_after["created"] == "infinity"


def test_delete_tombstone_and_truncate() -> None:
    deleted = change("orders_004_d")
    assert (deleted.op, deleted.key, deleted.after) == ("d", {"id": 2}, None)
    assert deleted.before is not None and deleted.before["id"] == 2

    tomb = change("orders_005_tombstone")
    assert tomb == ChangeEvent("x", {"id": 2}, None, None, "dbz.shop.orders", 0, 5, None, None,
                               None, None, True, "shop.orders")

    trunc = change("orders_006_t_truncate")
    assert (trunc.op, trunc.key, trunc.before, trunc.after) == ("t", None, None, None)
    assert (trunc.txid, trunc.lsn) == (902, 50000600)


def test_table_without_primary_key_has_no_key() -> None:
    ev = change("audit_000_c_keyless")
    assert (ev.key, ev.key_json, ev.table) == (None, None, "shop.audit")


def test_typed_false_keeps_the_payload_as_sent() -> None:
    ev = change("orders_003_u_with_before", typed=False)
    assert ev.after is ev.raw_after
    assert ev.after is not None and ev.after["price"] == "0.00"


# --------------------------------------------------------------------------- other messages


def test_transaction_begin_and_end() -> None:
    begin = decode_transaction(*envelope("transaction_000_begin"))
    end = decode_transaction(*envelope("transaction_001_end"))
    assert (begin.status, begin.event_count, begin.counts) == ("BEGIN", None, {})
    assert (end.status, end.event_count, end.counts) == ("END", 2, {"shop.orders": 2})
    # Debezium's END repeats the txid but not the LSN of its BEGIN.
    assert begin.id != end.id and begin.txid == end.txid == 900
    assert (begin.lsn, end.lsn) == (50000100, 50000300)
    assert end.commit_time == datetime(2024, 3, 1, 13, 33, 21, tzinfo=UTC)
    # data events of the transaction name the BEGIN id
    assert change("orders_002_c_edge_values").transaction_id == begin.id


def test_heartbeat_is_recognised() -> None:
    hb = decode_message(*envelope("heartbeat_000"))
    assert isinstance(hb, Heartbeat)
    assert (hb.server_name, hb.ts_ms) == ("dbz", 1709300005000)
    assert hb.time == datetime(2024, 3, 1, 13, 33, 25, tzinfo=UTC)


def test_messages_are_routed_to_the_right_decoder() -> None:
    with pytest.raises(DecodeError, match="decode_transaction"):
        decode_message(*envelope("transaction_000_begin"))
    with pytest.raises(DecodeError, match="not a transaction"):
        decode_transaction(*envelope("orders_000_r_snapshot"))


# --------------------------------------------------------------------------- malformed input


def _with_value(value: bytes | None, key: bytes | None = b'{"schema":null,"payload":{"id":1}}'
                ) -> Message:
    return ("dbz.shop.orders", 3, 41, key, value)


@pytest.mark.parametrize(("value", "key", "match"), [
    (b'{"schema":{"type":"struct"', None, "not valid JSON"),
    (b'{"before":null,"after":{"id":1},"op":"c"}', None, "schemas.enable"),
    (None, None, "tombstone .* without a key"),
    (b"", None, "not valid JSON"),
])
def test_malformed_messages_name_their_position(value: bytes | None, key: bytes | None,
                                                match: str) -> None:
    with pytest.raises(DecodeError, match=match) as err:
        decode_message("dbz.shop.orders", 3, 41, key, value)
    assert "dbz.shop.orders[3]@41" in str(err.value)
    assert err.value.details["offset"] == 41 and err.value.details["partition"] == 3


def _edited(name: str, edit: Any) -> Message:
    topic, partition, offset, key, value = envelope(name)
    assert value is not None
    doc = orjson.loads(value)
    edit(doc)
    return topic, partition, offset, key, orjson.dumps(doc)


def test_unknown_op_and_missing_after_are_errors() -> None:
    with pytest.raises(DecodeError, match="unsupported op 'm'"):
        decode_message(*_edited("orders_002_c_edge_values",
                                lambda d: d["payload"].update(op="m")))
    with pytest.raises(DecodeError, match="without an after image"):
        decode_message(*_edited("orders_002_c_edge_values",
                                lambda d: d["payload"].update(after=None)))
    with pytest.raises(DecodeError, match=r"@2: .*'price'"):
        decode_message(*_edited("orders_002_c_edge_values",
                                lambda d: d["payload"]["after"].update(price="twelve")))


def test_key_must_have_schemas_enabled() -> None:
    topic, partition, offset, _, value = envelope("orders_000_r_snapshot")
    with pytest.raises(DecodeError, match="key.converter.schemas.enable"):
        decode_message(topic, partition, offset, b'{"id":1}', value)


def same_table(a: pa.Table, b: pa.Table) -> bool:
    """Table equality where NaN equals NaN (the fixtures hold float NaN)."""
    if not a.schema.equals(b.schema, check_metadata=True):
        return False
    for name in a.column_names:
        x, y = a.column(name), b.column(name)
        if pa.types.is_floating(x.type):
            x, y = x.cast(pa.string()), y.cast(pa.string())
        if not x.equals(y):
            return False
    return True


@pytest.mark.parametrize("name", ["orders_000_r_snapshot", "orders_003_u_with_before",
                                  "orders_005_tombstone", "transaction_001_end"])
def test_fast_path_and_full_parse_agree(name: str) -> None:
    compact = envelope(name)
    topic, partition, offset, key, value = compact
    # Indented JSON defeats the byte split and takes the full parse.
    spaced = None if value is None else json.dumps(json.loads(value), indent=2).encode()
    spaced_key = None if key is None else json.dumps(json.loads(key), indent=2).encode()
    a = decode_any(*compact)
    b = decode_any(topic, partition, offset, spaced_key, spaced)
    assert repr(a) == repr(b)  # repr: NaN-safe and covers every compared field
    if isinstance(a, ChangeEvent) and isinstance(b, ChangeEvent):
        assert orjson.dumps(a.raw_after) == orjson.dumps(b.raw_after)
        assert same_table(events_to_arrow([compact]),
                          events_to_arrow([(topic, partition, offset, spaced_key, spaced)]))


def test_byte_split_is_not_fooled_by_payload_lookalikes() -> None:
    row_field = {"type": "string", "optional": True, "field": "payload"}
    schema = {"type": "struct", "name": "x.public.t.Envelope", "fields": [
        {"type": "struct", "optional": True, "field": "before", "fields": [row_field]},
        {"type": "struct", "optional": True, "field": "after", "fields": [row_field]},
        {"type": "struct", "optional": False, "field": "source",
         "fields": [{"type": "string", "optional": False, "field": "schema"}]},
        {"type": "string", "optional": False, "field": "op"}]}
    tricky = '{"schema":1},"payload":{"op":"d"}'
    payload = {"before": None, "after": {"payload": tricky},
               "source": {"schema": "public", "table": "t", "lsn": 1}, "op": "c"}
    for _ in range(2):  # the second time through uses the cached prefix
        ev = decode_message("x.public.t", 0, 0, None,
                            orjson.dumps({"schema": schema, "payload": payload}))
        assert isinstance(ev, ChangeEvent)
        assert ev.after == {"payload": tricky}


def test_schema_change_on_a_topic_is_picked_up() -> None:
    topic, partition, offset, key, value = envelope("orders_002_c_edge_values")
    assert value is not None
    decode_message(topic, partition, offset, key, value)  # caches this schema's prefix
    doc = orjson.loads(value)
    for image in ("before", "after"):
        doc["schema"]["fields"][0 if image == "before" else 1]["fields"].append(
            {"type": "int32", "optional": True, "field": "added"})
    doc["payload"]["after"]["added"] = 5
    ev = decode_message(topic, partition, offset + 1, key, orjson.dumps(doc))
    assert isinstance(ev, ChangeEvent) and ev.after is not None and ev.after["added"] == 5
    assert ev.row_codec is not None and "added" in ev.row_codec.names


# --------------------------------------------------------------------------- archive layout


def test_events_to_arrow_has_the_archive_layout() -> None:
    table = events_to_arrow(ORDERS)
    names = table.column_names
    assert names[:9] == [name for name, _ in METADATA_COLUMNS]
    assert [table.schema.field(n).type for n in names[:9]] == [t for _, t in METADATA_COLUMNS]
    assert names[9:12] == ["id", "qty", "n"]
    assert table.schema.field("price").type == pa.decimal128(12, 2)
    assert table.schema.field("doc").metadata == {PG_TYPE_KEY.encode(): b"jsonb"}
    assert table.schema.metadata == {b"tidelog.topic": b"dbz.shop.orders",
                                     b"tidelog.table": b"shop.orders"}
    meta = table.select(names[:9]).to_pylist()
    assert [m["__op"] for m in meta] == ["r", "r", "c", "u", "d", "x", "t"]
    assert [m["__offset"] for m in meta] == list(range(7))
    assert [m["__key"] for m in meta] == ['{"id":1}', '{"id":2}', '{"id":3}', '{"id":3}',
                                          '{"id":2}', '{"id":2}', None]
    assert [m["__txid"] for m in meta] == [880, 880, 900, 900, 901, None, 902]
    assert [m["__tx"] for m in meta] == [None, None, "900:50000100", "900:50000100",
                                         "901:50000400", None, "902:50000600"]
    assert meta[5] == {"__partition": 0, "__offset": 5, "__op": "x", "__key": '{"id":2}',
                       "__lsn": None, "__txid": None, "__tx": None, "__ts_ms": None,
                       "__before": None}
    assert meta[0]["__ts_ms"] == 1709300000000
    # data columns hold the after image, null for d, x and t
    assert table.column("id").to_pylist() == [1, 2, 3, 3, None, None, None]
    assert table.column("name").to_pylist()[3] == "updated"


def test_before_is_canonical_json_as_sent() -> None:
    table = events_to_arrow(ORDERS)
    before = table.column("__before").to_pylist()
    assert before[:3] == [None, None, None]
    update_before = json.loads(before[3])
    assert update_before == json.loads(envelope("orders_002_c_edge_values")[4] or b"")[
        "payload"]["after"]  # the values as Debezium sent them: strings stay strings
    assert before[3] == orjson.dumps(update_before, option=orjson.OPT_SORT_KEYS).decode()
    assert before[3].startswith('{"amount":"123456789012345678901234567890.1230000","amounts"')
    keys = list(update_before)
    assert keys == sorted(keys)


def test_composite_keys_are_canonical() -> None:
    topic, partition, offset, _, value = envelope("orders_000_r_snapshot")
    key = orjson.dumps({"schema": None, "payload": {"region": "eu", "id": 1}})
    table = events_to_arrow([(topic, partition, offset, key, value)])
    assert table.column("__key").to_pylist() == ['{"id":1,"region":"eu"}']


def test_events_and_raw_messages_give_the_same_table() -> None:
    events = [decode_message(*m) for m in ORDERS]
    assert same_table(events_to_arrow(events), events_to_arrow(ORDERS))


def test_heartbeats_and_transactions_produce_no_rows() -> None:
    mixed = [envelope("heartbeat_000"), *ORDERS[:2], envelope("transaction_000_begin"),
             decode_transaction(*envelope("transaction_001_end"))]
    assert events_to_arrow(mixed).num_rows == 2


def test_batches_must_hold_one_topic_and_one_schema() -> None:
    with pytest.raises(DecodeError, match="mixes topics"):
        events_to_arrow([ORDERS[0], envelope("audit_000_c_keyless")])
    topic, partition, offset, key, value = ORDERS[2]
    assert value is not None
    doc = orjson.loads(value)
    doc["schema"]["fields"][1]["fields"][2]["type"] = "int64"  # n: int4 -> int8
    doc["schema"]["fields"][1]["fields"][2]["parameters"]["__debezium.source.column.type"] = "INT8"
    altered = (topic, partition, offset + 10, key, orjson.dumps(doc))
    with pytest.raises(DecodeError, match=r"@12: the table's columns change"):
        events_to_arrow([*ORDERS, altered])
    events = [decode_message(*m) for m in [*ORDERS, altered]]
    runs = split_by_schema([e for e in events if isinstance(e, ChangeEvent)])
    assert [len(r) for r in runs] == [7, 1]
    assert events_to_arrow(runs[1]).schema.field("n").type == pa.int64()


def test_tombstone_only_batch_uses_the_given_schema() -> None:
    tomb = envelope("orders_005_tombstone")
    bare = events_to_arrow([tomb])
    assert bare.column_names == [name for name, _ in METADATA_COLUMNS]
    value = envelope("orders_000_r_snapshot")[4]
    assert value is not None
    typed = events_to_arrow([tomb], value_schema=orjson.loads(value)["schema"])
    assert typed.schema.field("price").type == pa.decimal128(12, 2)
    assert typed.column("price").to_pylist() == [None]
    assert typed.schema.metadata[b"tidelog.table"] == b"shop.orders"


def test_empty_batch() -> None:
    table = events_to_arrow([])
    assert table.num_rows == 0 and table.column_names[0] == "__partition"


def test_archive_table_survives_parquet_and_reads_in_duckdb(tmp_path: Path) -> None:
    table = events_to_arrow(ORDERS)
    path = tmp_path / "segment.parquet"
    pq.write_table(table, path)
    back = pq.read_table(path)
    assert back.schema.equals(table.schema, check_metadata=True)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    rows = con.execute(
        "select __offset, __op, price, created::varchar, day::varchar, ints, tags "
        f"from read_parquet('{path}') order by __offset").fetchall()
    assert rows[0][:5] == (0, "r", Decimal("19.90"), "2024-03-01 12:34:56.789012+00",
                           "2024-03-01")
    assert rows[2][2:] == (Decimal("-9999999999.90"), "1901-12-13 20:45:52.000001+00",
                           "1900-02-28", [None, -1, 2147483647], ["", None, "a,b", 'quote"d'])
    assert rows[3][3:5] == ("infinity", "infinity")
    assert rows[6] == (6, "t", None, None, None, None, None)


@pytest.mark.parametrize("name", ["__salt", "__row_hash", "__key"])
def test_a_source_column_named_like_tidelogs_own_is_refused(name: str) -> None:
    """`__salt` and `__row_hash` are appended by the archiver, the others lead every
    segment: a source column of that name would be overwritten or shadowed, so it is
    refused, by name."""
    doc = json.loads((ENVELOPES / "orders_000_r_snapshot.json").read_text(encoding="utf-8"))
    value = doc["value"]
    for part in value["schema"]["fields"]:
        if part["field"] in ("before", "after"):
            part["fields"][1]["field"] = name  # `qty`
    after = value["payload"]["after"]
    value["payload"]["after"] = {(name if k == "qty" else k): v for k, v in after.items()}
    message = (doc["topic"], doc["partition"], doc["offset"], _as_bytes(doc["key"]),
               orjson.dumps(value))
    with pytest.raises(DecodeError, match=f"source columns \\['{name}'\\] .* collide"):
        events_to_arrow([message])
