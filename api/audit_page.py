"""The audit pages' HTML: server-rendered (Jinja2, autoescaped) from the same lineage
answers the JSON API gives, plus a lineage graph drawn as inline SVG.

Pure rendering: the routes in api/routes/ui.py fetch the data and call these.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from tidelog.errors import TidelogError
from tidelog.settings import Settings

__all__ = ["GraphNode", "lineage_graph", "render", "retention_context", "erasure_ledger"]

_ENV = Environment(loader=PackageLoader("api", "templates"),
                   autoescape=select_autoescape(("html",)), trim_blocks=True,
                   lstrip_blocks=True)
# Row values include dates, decimals and bytes: show them as their text form.
_ENV.policies["json.dumps_kwargs"] = {"default": str, "sort_keys": True}


@dataclass(frozen=True)
class GraphNode:
    id: str
    column: int
    kind: str  # model | run | snapshot | table | topic | source
    title: str
    lines: tuple[str, ...] = ()
    feeds: tuple[str, ...] = ()  # ids of the nodes this one points at


def _time(ms: int | None) -> str:
    if ms is None:
        return "commit time unknown"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _lsn(lsn: int | None) -> str:
    # Postgres prints an LSN as two hex halves, e.g. 0/16B3748
    return "LSN unknown" if lsn is None else f"LSN {lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def lineage_graph(lineage: Mapping[str, Any]) -> list[GraphNode]:
    """Model version → run → snapshot → tables → topic partitions (the cut) → source."""
    model, cut = lineage["model"], lineage["cut"]
    partitions = sorted(cut["partitions"], key=lambda p: (p["topic"], p["partition"]))
    tables = sorted(lineage["tables"].items())
    nodes = [
        GraphNode("model", 0, "model", f"{model['name']} v{model['version']}",
                  (f"source {model.get('source', '')}",), ("run",)),
        GraphNode("run", 1, "run", f"run {lineage['run_id'][:12]}",
                  (f"recipe {lineage['recipe']['reference']}", f"seed {lineage['seed']}"),
                  ("snapshot",)),
        GraphNode("snapshot", 2, "snapshot", f"snapshot {lineage['snapshot_id']}",
                  (f"digest {lineage['digest'][:16]}…",
                   "window" if lineage.get("window") else "full state"),
                  tuple(f"table:{t}" for t, _ in tables)),
    ]
    for table, info in tables:
        # a table's topic is <prefix>.<schema>.<table>
        feeds = tuple(f"topic:{p['topic']}/{p['partition']}" for p in partitions
                      if p["topic"].endswith(f".{table}")) or tuple(
            f"topic:{p['topic']}/{p['partition']}" for p in partitions)
        nodes.append(GraphNode(f"table:{table}", 3, "table", table,
                               (f"{info.get('rows')} rows", f"digest {info['digest'][:16]}…"),
                               feeds))
    for p in partitions:
        nodes.append(GraphNode(f"topic:{p['topic']}/{p['partition']}", 4, "topic",
                               f"{p['topic']}[{p['partition']}]",
                               (f"offsets {p.get('start', 0)} … {p['end'] - 1}",
                                f"log {str(p.get('cluster_id'))[:10]}/"
                                f"{str(p.get('topic_id'))[:10]}"), ("source",)))
    source = lineage.get("source") or {}
    aligned = "whole transactions" if cut.get("transaction_aligned") else "not tx-aligned"
    nodes.append(GraphNode("source", 5, "source",
                           str(source.get("database") or "source database"),
                           (_lsn(cut.get("lsn")), _time(cut.get("commit_time_ms")), aligned)))
    return nodes


_BOX_W, _BOX_H, _GAP_X, _GAP_Y = 210, 74, 40, 14


def _layout(nodes: Sequence[GraphNode]) -> dict[str, Any]:
    columns: dict[int, list[GraphNode]] = {}
    for node in nodes:
        columns.setdefault(node.column, []).append(node)
    height = max(len(c) for c in columns.values()) * (_BOX_H + _GAP_Y) + _GAP_Y
    boxes, edges = [], []
    where: dict[str, tuple[float, float]] = {}
    for col, members in sorted(columns.items()):
        top = (height - len(members) * (_BOX_H + _GAP_Y)) / 2 + _GAP_Y / 2
        for i, node in enumerate(members):
            x, y = col * (_BOX_W + _GAP_X) + 10, top + i * (_BOX_H + _GAP_Y)
            boxes.append({"x": x, "y": y, "w": _BOX_W, "h": _BOX_H, "node": node})
            where[node.id] = (x, y)
    for node in nodes:
        x0, y0 = where[node.id]
        for target in node.feeds:
            if target in where:
                x1, y1 = where[target]
                edges.append({"x1": x0 + _BOX_W, "y1": y0 + _BOX_H / 2,
                              "x2": x1, "y2": y1 + _BOX_H / 2})
    width = (max(columns) + 1) * (_BOX_W + _GAP_X) + 10
    return {"boxes": boxes, "edges": edges, "width": width, "height": height}


def erasure_ledger(home: Path) -> tuple[list[dict[str, Any]], str | None]:
    """The erasure ledger's entries, newest first, and a problem reading it (if any).

    `tidelog erase` appends to `$TIDELOG_HOME/erasures/ledger.jsonl`; none yet is no
    erasure yet. Lines that are not JSON objects are counted, not shown."""
    path = home / "erasures" / "ledger.jsonl"
    if not path.exists():
        return [], None
    entries, bad = [], 0
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        return [], f"cannot read {path}: {exc.strerror or exc}"
    for line in lines:
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if not isinstance(entry, dict):
            bad += 1
            continue
        # The ledger `tidelog erase` writes (trainer/erasure.py): subject, completed_at,
        # actor and the affected segments, snapshots, runs and model versions at top level.
        entry.setdefault("subject_hash", entry.get("subject"))
        entry.setdefault("at", entry.get("completed_at") or entry.get("requested_at"))
        entry.setdefault("by", entry.get("actor"))
        raw = entry.get("affected")
        affected: dict[str, Any] = raw if isinstance(raw, dict) else {
            k: entry[k] for k in ("segments", "snapshots", "runs", "model_versions")
            if k in entry}
        entry["affected_counts"] = {k: len(v) if isinstance(v, list | dict) else v
                                    for k, v in sorted(affected.items())}
        entries.append(entry)
    problem = f"{bad} line(s) of {path} are not ledger entries" if bad else None
    return list(reversed(entries)), problem


def retention_context(settings: Settings, pins: Mapping[str, Mapping[str, Any]]
                      ) -> dict[str, Any]:
    """What the retention page shows: erasures, exclusions, a gc dry run, past gc runs.
    A part that cannot be read (MLflow down, say) shows its error; the rest still shows."""
    from api.gc import gc_history, plan_garbage
    from trainer.exclusions import ExclusionStore

    ledger, ledger_problem = erasure_ledger(Path(settings.home))
    store = ExclusionStore.for_settings(settings)
    plan: dict[str, Any] | None = None
    plan_error = None
    try:
        plan = plan_garbage(settings, pins).to_json()
    except TidelogError as exc:
        plan_error = exc.message
    return {"erasures": ledger, "ledger_problem": ledger_problem,
            "exclusions": store.active(), "exclusion_history": list(reversed(store.history())),
            "plan": plan, "plan_error": plan_error, "gc_runs": gc_history(settings, 10)}


def render(template: str, **context: Any) -> str:
    if "graph" in context:
        context["layout"] = _layout(context["graph"])
    return _ENV.get_template(template).render(**context)
