"""What the demo tells as it goes: timed step headings and the lines each step prints."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["Progress", "table_line", "print_rebuild", "print_model_lineage", "print_query",
           "print_diff"]


class Progress:
    """Progress lines, on stdout, or on stderr when stdout carries the JSON summary."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.started = time.perf_counter()
        self.timings: dict[str, float] = {}

    def say(self, text: str = "") -> None:
        print(text, file=self.stream, flush=True)

    @contextlib.contextmanager
    def step(self, name: str, title: str) -> Iterator[None]:
        self.say(f"\n[{time.perf_counter() - self.started:5.1f}s] {title}")
        began = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - began, 3)


def table_line(name: str, rows: int, digest: str) -> str:
    return f"    {name:26} {rows:>7} rows  digest {digest[:16]}"


def print_rebuild(p: Progress, report: Any) -> None:  # a trainer.rebuild.RebuildReport
    for name, check in sorted(report.tables.items()):
        mark = "same" if check.match else "DIFFERENT"
        p.say(f"    {name:26} recorded {check.recorded_digest[:16]}  rebuilt "
              f"{(check.rebuilt_digest or '-')[:16]}  {mark}")
    p.say(f"  dataset_match={report.dataset_match}  model_match={report.model_match} "
          f"(predictions sha256 {report.predictions_rebuilt[:16]})  "
          f"artifact_match={report.artifact_match}")
    p.say(f"  rebuild took {report.timings['total']:.1f}s; new run {report.new_run_id} is "
          f"tagged tidelog.rebuild_of={report.run_id}")


def print_model_lineage(p: Progress, data: dict[str, Any]) -> None:
    model = data["model"]
    p.say(f"  {model['name']}/{model['version']} <- run {data['run_id']} <- snapshot "
          f"{data['snapshot_id']}")
    for part in data["cut"]["partitions"]:
        p.say(f"      {part['topic']}[{part['partition']}] offsets {part['start']}.."
              f"{part['end']}  (cluster {part['cluster_id']}, topic id {part['topic_id']})")
    source = data["source"]
    p.say(f"      <- connector {source.get('connector')} <- {source.get('database')} "
          f"(LSN up to {data['lsn']}); rebuilds: {len(data['rebuilds'])}")


def print_query(p: Progress, query: dict[str, Any]) -> None:
    widths = [max(len(str(c)), *(len(str(r[i])) for r in query["rows"]))
              for i, c in enumerate(query["columns"])]
    p.say("    " + "  ".join(str(c).rjust(w) for c, w in zip(query["columns"], widths,
                                                            strict=True)))
    for row in query["rows"]:
        p.say("    " + "  ".join(str(v).rjust(w) for v, w in zip(row, widths, strict=True)))


def print_diff(p: Progress, diff: dict[str, Any]) -> None:
    for name, d in sorted(diff["tables"].items()):
        added = f", columns added: {', '.join(d['columns_added'])}" \
            if d["columns_added"] else ""
        p.say(f"    {name:26} +{d['inserted']} inserted, ~{d['updated']} updated, "
              f"-{d['deleted']} deleted{added}")
