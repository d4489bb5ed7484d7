"""Choosing a transaction-consistent cut from what the archive holds (pure planning).

Debezium's transaction topic gives, per source transaction, a BEGIN (in commit order) and
an END with the number of events per table. A transaction is complete in the archive when
every chosen table holds at least the END's count of its events below the high-water
marks. The cut stops, in every partition, before the first event of the earliest
incomplete transaction in commit order, so no transaction is ever half-applied across
the chosen tables.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["TxInfo", "TableEvents", "aligned_ends", "txid_of"]


def txid_of(transaction_id: str | None) -> int | None:
    """Debezium's transaction id is "txid:lsn"; BEGIN and END differ in the lsn part."""
    if not transaction_id:
        return None
    return int(transaction_id.split(":", 1)[0])


@dataclass(frozen=True)
class TxInfo:
    order: float  # offset of the BEGIN in the transaction topic (commit order)
    counts: Mapping[str, int] | None  # END's per-table event counts; None when no END yet


@dataclass(frozen=True)
class TableEvents:
    table: str  # schema.table, as in the END's data_collections
    tp: tuple[str, int]
    offsets: list[int]
    txids: list[int | None]  # per event; None for initial-snapshot reads and tombstones
    high_water_mark: int


def transactions_from_rows(rows: list[tuple[int, str, str, str | None]]) -> dict[int, TxInfo]:
    """rows: (offset, status, id, data_collections JSON) from the transaction topic."""
    begins: dict[int, float] = {}
    ends: dict[int, dict[str, int]] = {}
    for offset, status, tx_id, collections in rows:
        txid = txid_of(tx_id)
        if txid is None:
            continue
        if status == "BEGIN":
            begins.setdefault(txid, float(offset))
        elif status == "END":
            counts = json.loads(collections) if collections else []
            ends[txid] = {c["data_collection"]: int(c["event_count"]) for c in counts}
    return {t: TxInfo(order, ends.get(t)) for t, order in begins.items()}


def aligned_ends(tables: list[TableEvents], txs: Mapping[int, TxInfo]
                 ) -> tuple[dict[tuple[str, int], int], list[int]]:
    """End offset per partition, and the ids of the transactions left out."""
    counts: dict[int, dict[str, int]] = {}
    for t in tables:
        for txid in t.txids:
            if txid is not None:
                per_table = counts.setdefault(txid, {})
                per_table[t.table] = per_table.get(t.table, 0) + 1
    chosen = {t.table for t in tables}
    incomplete: list[int] = []
    # Every transaction the archive knows of counts, including ones none of whose events
    # are archived yet: leaving out an earlier transaction while keeping a later one would
    # give a state the database never had.
    for txid in set(counts) | set(txs):
        seen = counts.get(txid, {})
        info = txs.get(txid)
        if info is None or info.counts is None:
            incomplete.append(txid)
            continue
        for table in chosen:
            if seen.get(table, 0) < info.counts.get(table, 0):
                incomplete.append(txid)
                break
    ends = {t.tp: t.high_water_mark for t in tables}
    if not incomplete:
        return ends, []

    def order(txid: int | None) -> float:
        if txid is None:
            return -math.inf
        info = txs.get(txid)
        return info.order if info is not None else math.inf

    first_bad = min(order(t) for t in incomplete)
    left_out = sorted({txid for txid in set(counts) | set(txs) if order(txid) >= first_bad})
    for t in tables:
        for offset, txid in zip(t.offsets, t.txids, strict=True):
            if txid is not None and order(txid) >= first_bad:
                ends[t.tp] = offset
                break
    return ends, left_out
