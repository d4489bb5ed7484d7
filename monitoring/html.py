"""The drift report as one self-contained HTML page: no script, no external style or
image; the distribution plots are inline SVG drawn from the report's JSON."""

from __future__ import annotations

from typing import Any

from monitoring.report import MonitorReport

__all__ = ["render_html"]

_W, _H = 320.0, 110.0


def _bars(dist: dict[str, Any]) -> dict[str, Any]:
    """Rectangles for the training (reference) and current shares, side by side per bin."""
    ref, cur = dist["reference"], dist["current"]
    n = max(len(ref), 1)
    top = max([*ref, *cur, 1e-12])
    slot = _W / n
    rects = []
    for i, (r, c) in enumerate(zip(ref, cur, strict=True)):
        for j, (share, cls) in enumerate(((r, "ref"), (c, "cur"))):
            h = _H * share / top
            rects.append({"x": round(i * slot + j * slot / 2, 2), "y": round(_H - h, 2),
                          "w": round(max(slot / 2 - 0.5, 0.5), 2), "h": round(h, 2),
                          "cls": cls, "share": share})
    if dist["kind"] == "num":
        edges = dist["edges"]
        axis = [f"{edges[0]:.4g}", f"{edges[-1]:.4g}"]
    else:
        cats = dist["categories"]
        axis = [cats[0], cats[-1]] if cats else ["", ""]
    return {"rects": rects, "width": _W, "height": _H, "axis": axis}


def render_html(report: MonitorReport) -> str:
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("monitoring", "templates"),
                      autoescape=select_autoescape(["html"]))
    body = report.to_json()
    plots = {name: _bars(d) for name, d in report.distributions.items()}
    return env.get_template("report.html").render(r=body, plots=plots)
