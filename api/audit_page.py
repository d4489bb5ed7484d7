"""The audit pages' HTML: server-rendered (Jinja2, autoescaped) from the same lineage
answers the JSON API gives, plus a lineage graph drawn as inline SVG.

Pure rendering: the routes in api/routes/ui.py fetch the data and call these.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

__all__ = ["GraphNode", "lineage_graph", "render"]

_ENV = Environment(loader=PackageLoader("api", "templates"),
                   autoescape=select_autoescape(("html",)), trim_blocks=True,
                   lstrip_blocks=True)
# Row values include dates, decimals and bytes: show them as their text form.
_ENV.policies["json.dumps_kwargs"] = {"default": str, "sort_keys": True}


@dataclass(frozen=True)
class GraphNode:
    column: int
    kind: str  # model | run | snapshot | table | topic | source
    title: str
    lines: tuple[str, ...] = ()
    href: str | None = None


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
    nodes = [
        GraphNode(0, "model", f"{model['name']} v{model['version']}",
                  (f"source {model.get('source', '')}",)),
        GraphNode(1, "run", f"run {lineage['run_id'][:12]}",
                  (f"recipe {lineage['recipe']['reference']}", f"seed {lineage['seed']}")),
        GraphNode(2, "snapshot", f"snapshot {lineage['snapshot_id']}",
                  (f"digest {lineage['digest'][:16]}…",
                   "window" if lineage.get("window") else "full state")),
    ]
    for table, info in sorted(lineage["tables"].items()):
        nodes.append(GraphNode(3, "table", table,
                               (f"{info.get('rows')} rows", f"digest {info['digest'][:16]}…")))
    for p in sorted(cut["partitions"], key=lambda p: (p["topic"], p["partition"])):
        nodes.append(GraphNode(4, "topic", f"{p['topic']}[{p['partition']}]",
                               (f"offsets {p.get('start', 0)} … {p['end'] - 1}",
                                f"log {str(p.get('cluster_id'))[:10]}/"
                                f"{str(p.get('topic_id'))[:10]}")))
    source = lineage.get("source") or {}
    aligned = "whole transactions" if cut.get("transaction_aligned") else "not tx-aligned"
    nodes.append(GraphNode(5, "source", str(source.get("database") or "source database"),
                           (_lsn(cut.get("lsn")), _time(cut.get("commit_time_ms")), aligned)))
    return nodes


_BOX_W, _BOX_H, _GAP_X, _GAP_Y = 210, 74, 40, 14


def _layout(nodes: Sequence[GraphNode]) -> dict[str, Any]:
    columns: dict[int, list[GraphNode]] = {}
    for node in nodes:
        columns.setdefault(node.column, []).append(node)
    height = max(len(c) for c in columns.values()) * (_BOX_H + _GAP_Y) + _GAP_Y
    boxes, edges = [], []
    placed: dict[int, list[tuple[float, float]]] = {}
    for col, members in sorted(columns.items()):
        top = (height - len(members) * (_BOX_H + _GAP_Y)) / 2 + _GAP_Y / 2
        for i, node in enumerate(members):
            x, y = col * (_BOX_W + _GAP_X) + 10, top + i * (_BOX_H + _GAP_Y)
            boxes.append({"x": x, "y": y, "w": _BOX_W, "h": _BOX_H, "node": node})
            placed.setdefault(col, []).append((x, y))
    for col in sorted(placed)[1:]:
        for (x0, y0) in placed.get(col - 1, []):
            for (x1, y1) in placed[col]:
                edges.append({"x1": x0 + _BOX_W, "y1": y0 + _BOX_H / 2,
                              "x2": x1, "y2": y1 + _BOX_H / 2})
    width = (max(columns) + 1) * (_BOX_W + _GAP_X) + 10
    return {"boxes": boxes, "edges": edges, "width": width, "height": height}


def render(template: str, **context: Any) -> str:
    if "graph" in context:
        context["layout"] = _layout(context["graph"])
    return _ENV.get_template(template).render(**context)
