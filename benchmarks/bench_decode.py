"""Decode throughput: 200k synthetic Debezium envelopes (JsonConverter, schemas on).

The archive must decode >= 100k events/s per core; this measures the two paths that
matter: `decode_message` (exact Python values) and `events_to_arrow` over raw messages
(the archive's path). Run: .venv/bin/python benchmarks/bench_decode.py [N]
"""

from __future__ import annotations

import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson

from cdc.events import decode_message, events_to_arrow

__all__ = ["make_messages", "main"]

TOPIC = "bench.public.orders"
Message = tuple[str, int, int, bytes | None, bytes | None]


def _col(field: str, ctype: str, pg: str, length: int, scale: int | None,
         name: str | None = None, optional: bool = True) -> dict[str, Any]:
    col: dict[str, Any] = {"type": ctype, "optional": optional}
    if name:
        col.update(name=name, version=1)
    params = {"__debezium.source.column.type": pg, "__debezium.source.column.length": str(length)}
    if scale is not None:
        params["__debezium.source.column.scale"] = str(scale)
    params["__debezium.source.column.name"] = field
    col["parameters"] = params
    col["field"] = field
    return col


_COLUMNS = [
    _col("id", "int64", "INT8", 19, 0, optional=False),
    _col("qty", "int32", "INT4", 10, 0),
    _col("price", "string", "NUMERIC", 12, 2),
    _col("amount", "string", "NUMERIC", 131089, 0),
    _col("name", "string", "TEXT", 2147483647, 0),
    _col("created", "string", "TIMESTAMPTZ", 35, 6, "io.debezium.time.ZonedTimestamp"),
    _col("updated", "int64", "TIMESTAMP", 29, 6, "io.debezium.time.MicroTimestamp"),
    _col("day", "int32", "DATE", 13, 0, "io.debezium.time.Date"),
    _col("doc", "string", "JSONB", 2147483647, 0, "io.debezium.data.Json"),
    _col("uid", "string", "UUID", 2147483647, 0, "io.debezium.data.Uuid"),
]

_SOURCE_FIELDS = [
    ("version", "string", False), ("connector", "string", False), ("name", "string", False),
    ("ts_ms", "int64", False), ("snapshot", "string", True), ("db", "string", False),
    ("sequence", "string", True), ("ts_us", "int64", True), ("ts_ns", "int64", True),
    ("schema", "string", False), ("table", "string", False), ("txId", "int64", True),
    ("lsn", "int64", True), ("xmin", "int64", True), ("origin", "string", True),
    ("origin_lsn", "int64", True),
]


def _schemas() -> tuple[dict[str, Any], dict[str, Any]]:
    row = {"type": "struct", "fields": _COLUMNS, "optional": True, "name": f"{TOPIC}.Value"}
    source = {"type": "struct", "optional": False, "version": 1, "field": "source",
              "name": "io.debezium.connector.postgresql.Source",
              "fields": [{"type": t, "optional": o, "field": f} for f, t, o in _SOURCE_FIELDS]}
    tx = {"type": "struct", "optional": True, "name": "event.block", "version": 1,
          "field": "transaction",
          "fields": [{"type": "string", "optional": False, "field": "id"},
                     {"type": "int64", "optional": False, "field": "total_order"},
                     {"type": "int64", "optional": False, "field": "data_collection_order"}]}
    value = {"type": "struct", "optional": False, "name": f"{TOPIC}.Envelope", "version": 2,
             "fields": [dict(row, field="before"), dict(row, field="after"), source, tx,
                        {"type": "string", "optional": False, "field": "op"},
                        {"type": "int64", "optional": True, "field": "ts_ms"},
                        {"type": "int64", "optional": True, "field": "ts_us"},
                        {"type": "int64", "optional": True, "field": "ts_ns"}]}
    key = {"type": "struct", "optional": False, "name": f"{TOPIC}.Key",
           "fields": [{"type": "int64", "optional": False, "field": "id"}]}
    return key, value


def _row(rng: random.Random, i: int) -> dict[str, Any]:
    micros = rng.randrange(-2_000_000_000_000_000, 2_000_000_000_000_000)
    secs, us = divmod(micros, 1_000_000)
    created = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{us:06d}Z"
    return {
        "id": i,
        "qty": rng.randrange(-1000, 1000),
        "price": f"{rng.randrange(-10**10, 10**10) / 100:.2f}",
        "amount": f"{rng.randrange(10**12)}.{rng.randrange(10**4):04d}",
        "name": rng.choice(["Widget", "Gadget ✓", "naïve café", "👩‍🔬 lab", "plain"]) + str(i),
        "created": created,
        "updated": micros,
        "day": rng.randrange(-30000, 30000),
        "doc": orjson.dumps({"i": i, "tags": ["a", "b"], "ok": True}).decode(),
        "uid": str(uuid.UUID(int=rng.getrandbits(128))),
    }


def make_messages(n: int, seed: int = 7) -> list[Message]:
    """n realistic change-event messages (70% c, 20% u with before, 10% d) as bytes."""
    rng = random.Random(seed)
    key_schema, value_schema = _schemas()
    messages: list[Message] = []
    for offset in range(n):
        i = offset // 2 + 1
        roll = rng.random()
        op = "c" if roll < 0.7 else "u" if roll < 0.9 else "d"
        row = _row(rng, i)
        before = _row(rng, i) if op != "c" else None
        after = row if op != "d" else None
        lsn = 50_000_000 + offset * 200
        txid = 1000 + offset
        ts_ms = 1_709_300_000_000 + offset
        payload = {
            "before": before, "after": after,
            "source": {"version": "3.6.3.Final", "connector": "postgresql", "name": "bench",
                       "ts_ms": ts_ms, "snapshot": None, "db": "shop",
                       "sequence": f'[null,"{lsn}"]', "ts_us": ts_ms * 1000,
                       "ts_ns": ts_ms * 1_000_000, "schema": "public", "table": "orders",
                       "txId": txid, "lsn": lsn, "xmin": None, "origin": None,
                       "origin_lsn": None},
            "transaction": {"id": f"{txid}:{lsn}", "total_order": 1, "data_collection_order": 1},
            "op": op, "ts_ms": ts_ms + 5, "ts_us": (ts_ms + 5) * 1000,
            "ts_ns": (ts_ms + 5) * 1_000_000,
        }
        key = orjson.dumps({"schema": key_schema, "payload": {"id": i}})
        value = orjson.dumps({"schema": value_schema, "payload": payload})
        messages.append((TOPIC, 0, offset, key, value))
    return messages


def _median_rate(n: int, run: Callable[[], object], repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return n / statistics.median(times)


def main(argv: list[str]) -> None:
    n = int(argv[1]) if len(argv) > 1 else 200_000
    messages = make_messages(n)
    size = sum(len(m[4] or b"") for m in messages) / n
    print(f"{n} messages, {size:.0f} bytes per value on average")

    def typed() -> None:
        for m in messages:
            decode_message(*m)

    def untyped() -> None:
        for m in messages:
            decode_message(*m, typed=False)

    def arrow() -> None:
        table = events_to_arrow(messages)
        assert table.num_rows == n

    print(f"decode_message (exact Python values): {_median_rate(n, typed):>10,.0f} events/s")
    print(f"decode_message (typed=False):         {_median_rate(n, untyped):>10,.0f} events/s")
    print(f"events_to_arrow (archive layout):     {_median_rate(n, arrow):>10,.0f} events/s")


if __name__ == "__main__":
    main(sys.argv)
