"""The content digest's cost on TPC-H lineitem, side by side in one process.

    .venv/bin/python benchmarks/bench_digest.py [--sf 0.1] [--runs 5] [--json]

Generates `lineitem` with DuckDB's tpch extension (not timed), writes it to Parquet with
and without a `__salt` column (16 random bytes per row, as the archiver adds), then times,
alternating in each run:

- `doc`: the SQL of docs/digest.md (chained `||` per field), the plain definition;
- `tidelog`: `snapshotter.digest.table_digest` (one `concat` per row);
- `tidelog, salted`: the same over the salted file.

`doc` and `tidelog` must give the same digest (checked); the salted one differs by design.
Prints the median seconds of each and the ratios.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cdc.columns import with_salts  # noqa: E402
from snapshotter.digest import table_digest  # noqa: E402
from tidelog.duckdb_extensions import load_extension  # noqa: E402

DOC = Path(__file__).resolve().parents[1] / "docs" / "digest.md"


def doc_sql() -> list[str]:
    """The statements of the doc's table-digest block."""
    [block] = [b for b in re.findall(r"```sql\n(.*?)```", DOC.read_text(), flags=re.S)
               if b.startswith("-- tidelog-digest-v1: table digest")]
    return [s for s in block.split(";\n") if s.strip() and not s.strip().startswith("--")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sf", type=float, default=0.1)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="tl-bench-digest-"))
    gen = duckdb.connect()
    load_extension(gen, "tpch")
    gen.execute(f"CALL dbgen(sf={args.sf})")
    plain, salted = scratch / "lineitem.parquet", scratch / "lineitem-salted.parquet"
    table = gen.execute("SELECT * FROM lineitem").to_arrow_table()
    pq.write_table(table, plain)
    pq.write_table(with_salts(table), salted)
    rows = table.num_rows
    del table, gen

    con = duckdb.connect()
    con.execute(f"CREATE VIEW digest_input AS FROM read_parquet('{plain}')")
    statements = doc_sql()

    def doc() -> str:
        for statement in statements[:-1]:
            con.execute(statement)
        result = con.execute(statements[-1]).fetchone()
        assert result is not None
        return str(result[3])

    cases = {
        "doc": doc,
        "tidelog": lambda: table_digest(con, f"read_parquet('{plain}')").digest,
        "tidelog, salted": lambda: table_digest(con, f"read_parquet('{salted}')").digest,
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    digests: dict[str, str] = {}
    for run in range(args.runs):
        order = list(cases) if run % 2 == 0 else list(reversed(cases))
        for name in order:
            began = time.perf_counter()
            digests[name] = cases[name]()
            times[name].append(time.perf_counter() - began)
    assert digests["doc"] == digests["tidelog"], digests
    assert digests["tidelog, salted"] != digests["tidelog"]
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    result = {"rows": rows, "runs": args.runs, "median_seconds": medians,
              "tidelog_over_doc": medians["tidelog"] / medians["doc"],
              "salted_over_plain": medians["tidelog, salted"] / medians["tidelog"],
              "all_seconds": times}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for name, value in medians.items():
            print(f"{name:18} {value:.3f} s median of {args.runs}")
        print(f"tidelog / doc SQL     {result['tidelog_over_doc']:.2f}x")
        print(f"salted / plain        {result['salted_over_plain']:.2f}x  ({rows:,} rows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
