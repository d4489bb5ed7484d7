"""What `connector apply` records for `stack up`, and the crash-point switch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tidelog.crashpoints import POINTS, crash_point
from tidelog.stack.connectors import forget_connector, recorded_connectors, remember_connector


def test_a_recorded_connector_never_holds_its_password(tmp_path: Path) -> None:
    remember_connector(tmp_path, {"name": "a", "database.password": "s3cret",
                                  "database.user": "u"})
    remember_connector(tmp_path, {"name": "b", "database.password": "", "x": "1"})
    records = recorded_connectors(tmp_path)
    assert records["a"] == {"config": {"name": "a", "database.user": "u"},
                            "needs_password": True}
    assert records["b"] == {"config": {"name": "b", "x": "1"}, "needs_password": False}
    assert not any("s3cret" in p.read_text() for p in tmp_path.rglob("*") if p.is_file())
    forget_connector(tmp_path, "a")
    forget_connector(tmp_path, "never-recorded")
    assert list(recorded_connectors(tmp_path)) == ["b"]


def test_crash_point_exits_like_sigkill_only_when_named() -> None:
    code = ("import sys; from tidelog.crashpoints import crash_point; "
            "crash_point('snapshot.after_publish'); print('went on')")
    for wanted, status, out in [("snapshot.after_publish", 137, ""),
                                ("catalog.before_publish,snapshot.after_publish", 137, ""),
                                ("catalog.after_public", 0, "went on\n"), ("", 0, "went on\n")]:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env={"TIDELOG_CRASH_AT": wanted, "PATH": "/usr/bin"},
                              cwd=Path(__file__).resolve().parents[2])
        assert (done.returncode, done.stdout) == (status, out), (wanted, done.stderr)
    assert "snapshot.after_publish" in POINTS
    with pytest.raises(ValueError, match="unknown crash point"):
        crash_point("no.such.point")


def test_every_crash_point_is_reached_documented_and_tested() -> None:
    root = Path(__file__).resolve().parents[2]
    code = "\n".join(p.read_text() for d in ("tidelog", "cdc", "snapshotter", "trainer",
                                                  "pipelines", "serving", "monitoring", "api")
                     for p in (root / d).rglob("*.py"))
    tests = "\n".join(p.read_text() for p in (root / "tests").rglob("test_*.py"))
    documented = (root / "docs" / "catalog.md").read_text()
    for point in POINTS:
        assert (f'crash_point("{point}")' in code or f'step="{point}"' in code), point
        assert f"| `{point}` |" in documented, f"docs/catalog.md does not list {point}"
        family = f'startswith("{point.split(".")[0]}.")'  # a test over every point of a step
        assert point in tests or family in tests, f"no test crashes at {point}"
