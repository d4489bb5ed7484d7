"""Transaction-consistent cuts (pure planning)."""

from __future__ import annotations

from snapshotter.alignment import TableEvents, TxInfo, aligned_ends, transactions_from_rows


def _table(name: str, txids: list[int | None], hwm: int | None = None) -> TableEvents:
    offsets = list(range(len(txids)))
    return TableEvents(name, (f"p.{name}", 0), offsets, txids,
                       len(txids) if hwm is None else hwm)


def test_all_complete_keeps_high_water_marks() -> None:
    txs = {1: TxInfo(0, {"public.a": 2}), 2: TxInfo(2, {"public.a": 1, "public.b": 1})}
    ends, left = aligned_ends([_table("public.a", [None, 1, 1, 2]),
                               _table("public.b", [2])], txs)
    assert ends == {("p.public.a", 0): 4, ("p.public.b", 0): 1} and left == []


def test_half_archived_transaction_is_cut_in_every_table() -> None:
    # tx 2 touched a and b; b's event is not archived yet
    txs = {1: TxInfo(0, {"public.a": 1}), 2: TxInfo(2, {"public.a": 1, "public.b": 1}),
           3: TxInfo(4, {"public.a": 1})}
    ends, left = aligned_ends([_table("public.a", [1, 2, 3]), _table("public.b", [])], txs)
    assert ends[("p.public.a", 0)] == 1  # stops before tx 2 and everything after it
    assert left == [2, 3]


def test_missing_end_is_incomplete() -> None:
    txs = {1: TxInfo(0, {"public.a": 1}), 2: TxInfo(2, None)}
    ends, left = aligned_ends([_table("public.a", [1, 2])], txs)
    assert ends[("p.public.a", 0)] == 1 and left == [2]


def test_earlier_transaction_with_nothing_archived_stops_later_ones() -> None:
    # tx 1 (only b) committed before tx 2 (only a); a is archived further than b
    txs = {1: TxInfo(0, {"public.b": 1}), 2: TxInfo(2, {"public.a": 1})}
    ends, left = aligned_ends([_table("public.a", [2]), _table("public.b", [])], txs)
    assert ends == {("p.public.a", 0): 0, ("p.public.b", 0): 0} and left == [1, 2]


def test_snapshot_reads_without_transactions_always_stay() -> None:
    txs = {5: TxInfo(10, None)}
    ends, _ = aligned_ends([_table("public.a", [None, None, 5])], txs)
    assert ends[("p.public.a", 0)] == 2


def test_transactions_from_rows_pairs_begin_and_end_by_txid() -> None:
    rows = [(0, "BEGIN", "740:100", None),
            (1, "END", "740:180", '[{"data_collection": "public.a", "event_count": 3}]'),
            (2, "BEGIN", "741:200", None)]
    txs = transactions_from_rows(rows)
    assert txs[740] == TxInfo(0.0, {"public.a": 3})
    assert txs[741] == TxInfo(2.0, None)
