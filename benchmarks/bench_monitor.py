"""Drift report compute time: `monitoring.report.compare` over N current rows × F features
against a training sample of the same size (numeric columns, half of them shifted), the
median of several runs, each stage timed alone too (per-feature tests, the isolation
forest, the plot histograms). No stack needed: the reference and current samples are
built in memory, the way `monitor_report` hands them to `compare`.

    .venv/bin/python benchmarks/bench_monitor.py --rows 1000000 --features 10 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Any

import numpy as np
import polars as pl


def _samples(rows: int, features: int, seed: int) -> tuple[Any, Any]:
    from sklearn.linear_model import LogisticRegression

    from monitoring.report import Current, Reference, Target

    rng = np.random.default_rng(seed)
    ref = pl.DataFrame({f"f{i}": rng.normal(size=rows) for i in range(features)})
    cur = pl.DataFrame({f"f{i}": rng.normal(loc=0.5 if i % 2 else 0.0, size=rows)
                        for i in range(features)})
    fit_rows = min(rows, 20_000)
    x = ref.head(fit_rows).to_numpy()
    model = LogisticRegression(max_iter=200).fit(x, (x[:, 0] > 0).astype(int))
    target = Target("bench", "champion", "1", "r" * 32, "s" * 16, "d" * 64, "f" * 16,
                    "bench:train")
    reference = Reference(target, ref, model.predict(ref.to_numpy()), True, {}, model, None)
    current = Current("results", "bench@0:0-0", cur, model.predict(cur.to_numpy()).tolist())
    return reference, current


def _time(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from monitoring.outliers import outliers
    from monitoring.report import compare
    from monitoring.stattests import column_drift

    reference, current = _samples(args.rows, args.features, seed=1)
    totals, drift_only, forest = [], [], []
    report = None
    for _ in range(args.repeat):
        totals.append(_time(lambda: None))
        started = time.perf_counter()
        report = compare(reference, current)
        totals[-1] = time.perf_counter() - started
        drift_only.append(_time(lambda: [
            column_drift(c, reference.features[c].to_numpy(), current.features[c].to_numpy())
            for c in reference.features.columns]))
        forest.append(_time(lambda: outliers(reference.features, current.features)))
    assert report is not None
    out = {
        "rows": args.rows, "features": args.features, "repeat": args.repeat,
        "method": report.columns[0].method,
        "drifted": report.drifted_columns,
        "compare_seconds_median": statistics.median(totals),
        "compare_seconds_runs": [round(t, 3) for t in totals],
        "feature_tests_seconds_median": statistics.median(drift_only),
        "isolation_forest_seconds_median": statistics.median(forest),
        "machine": {"python": platform.python_version(), "cpus": _cpus(),
                    "platform": platform.platform()},
    }
    print(json.dumps(out, indent=2))


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
