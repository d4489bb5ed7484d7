"""Folding segments in groups gives the same state as one materialisation."""

from __future__ import annotations

import json
import random

import polars as pl
import pytest

from snapshotter import full_build
from snapshotter.materialise import materialise


def _segments(n_segments: int, per_segment: int, keys: int, seed: int) -> list[pl.LazyFrame]:
    rng = random.Random(seed)
    frames = []
    offset = 0
    for _ in range(n_segments):
        rows = []
        for _ in range(per_segment):
            k = rng.randrange(keys)
            op = rng.choice("ccuudx")
            upsert = op in "cu"
            rows.append({"__partition": 0, "__offset": offset, "__op": op,
                         "__key": json.dumps({"id": k}, separators=(",", ":")),
                         "__lsn": offset, "__txid": offset, "__tx": None, "__ts_ms": 0,
                         "__before": None, "id": k if upsert else None,
                         "v": rng.random() if upsert else None})
            offset += 1
        frames.append(pl.DataFrame(rows, schema_overrides={"__partition": pl.Int32}).lazy())
    return frames


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fold_equals_single_pass(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    frames = _segments(9, 200, 150, seed)
    whole = materialise(frames, keep_key=True)
    monkeypatch.setattr(full_build, "FOLD_EVENTS", 500)
    folded = full_build.fold(frames, None)
    assert folded.equals(whole)
    # and on top of a base state, as an incremental build does
    base = materialise(frames[:3], keep_key=True)
    assert full_build.fold(frames[3:], base.lazy()).equals(whole)
