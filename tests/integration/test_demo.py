"""`tidelog demo` end to end on the session stack: its verification results, not just its
exit code; and a second run on the same stack, after which the first run's model is still
rebuildable although its connector and source schema are gone."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tidelog import cli
from tidelog.settings import Settings
from trainer.rebuild import rebuild

pytestmark = pytest.mark.integration


def _run_demo(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any], str]:
    code = cli.main(["demo", "--json", *args])
    out, err = capsys.readouterr()
    assert out, err  # an error goes to stderr, with nothing on stdout
    return code, json.loads(out), err  # stdout holds the JSON summary and nothing else


def _check(summary: dict[str, Any], progress: str) -> None:
    assert summary["ok"] is True
    checks = summary["verification"]
    for name in ("dataset_match", "model_match", "artifact_match", "verified", "digests_equal",
                 "snapshots_equal_source", "database_moved_on", "lineage_present",
                 "diff_non_empty", "prediction_names_its_data"):
        assert checks[name] is True, name

    first, second = summary["runs"]
    schema = summary["names"]["schema"]
    tables = {f"{schema}.{t}" for t in ("customers", "subscriptions", "payments")}
    assert set(first["tables"]) == set(second["tables"]) == tables
    loaded = summary["source"]["rows_loaded"]
    assert {t: first["tables"][f"{schema}.{t}"]["rows"] for t in loaded} == loaded
    assert loaded["payments"] > loaded["subscriptions"] > loaded["customers"]
    assert first["source_match"] and second["source_match"]
    assert first["registered_version"] and second["registered_version"]
    assert int(second["registered_version"]) == int(first["registered_version"]) + 1
    assert second["built_from"] == first["snapshot_id"]  # incremental
    assert all(first["tables"][t]["digest"] != second["tables"][t]["digest"] for t in tables)

    # the rebuild: of run 1, digest by digest, with identical predictions
    rebuilt = summary["rebuild"]
    assert rebuilt["run_id"] == first["run_id"] and rebuilt["new_run_id"] != first["run_id"]
    assert rebuilt["dataset_match"] and rebuilt["model_match"] and rebuilt["verified"]
    assert rebuilt["digest"]["recorded"] == rebuilt["digest"]["rebuilt"] == first["digest"]
    for table in tables:
        check = rebuilt["tables"][table]
        assert check["match"] and check["recorded"] == check["rebuilt"]
        assert check["recorded"] == first["tables"][table]["digest"]
    assert rebuilt["predictions_sha256"]["recorded"] == rebuilt["predictions_sha256"]["rebuilt"]
    assert rebuilt["predictions_sha256"]["rebuilt"] == first["predictions_sha256"]

    # lineage of both models, back to the connector and the cut
    models = summary["lineage"]["models"]
    assert [m["run_id"] for m in models] == [first["run_id"], second["run_id"]]
    for model, run in zip(models, (first, second), strict=True):
        assert model["snapshot_id"] == run["snapshot_id"]
        assert model["cut"]["partitions"] == run["cut"]["partitions"]
        assert model["source"]["connector"] == summary["names"]["connector"]
        assert model["lsn"]
    assert rebuilt["new_run_id"] in {r["run_id"] for r in models[0]["rebuilds"]}
    rows = summary["lineage"]["rows"]
    updated = rows["updated"]["snapshots"]
    assert [s["present"] for s in updated] == [True, True]
    assert updated[0]["version"] != updated[1]["version"]
    assert updated[1]["email"] == "ada.new@example.com"
    assert first["run_id"] in updated[0]["runs"] and second["run_id"] in updated[1]["runs"]
    assert [s["present"] for s in rows["deleted"]["snapshots"]] == [True, False]
    assert [s["present"] for s in rows["inserted"]["snapshots"]] == [False, True]

    # the gate, then a prediction that names its model, run, snapshot and cut
    served = summary["serve"]
    gate = served["gate"]
    assert gate["candidate_run_id"] == second["run_id"]
    assert gate["champion_run_id"] == first["run_id"]
    assert [c["metric"] for c in gate["checks"]] == ["accuracy"]
    champion = second if gate["passed"] else first
    assert gate["decision"] == ("promote" if gate["passed"] else "reject")
    assert served["champion"] == champion["model"]
    answer = served["prediction"]
    assert answer["model"]["run_id"] == champion["run_id"]
    assert answer["model"]["version"] == str(champion["registered_version"])
    assert answer["model"]["alias"] == "champion" and len(answer["predictions"]) == 3
    assert answer["snapshot_id"] == champion["snapshot_id"]
    assert len(answer["cut_digest"]) == 64 and checks["prediction_names_its_data"] is True

    # the DuckDB query over both snapshots, and the diff
    query = summary["query"]
    assert first["snapshot_id"] in query["sql"] and second["snapshot_id"] in query["sql"]
    assert [r[0] for r in query["rows"]] == ["run 1", "run 2"]
    by_run = {r[0]: dict(zip(query["columns"], r, strict=True)) for r in query["rows"]}
    assert by_run["run 1"]["customers"] == first["tables"][f"{schema}.customers"]["rows"]
    assert by_run["run 2"]["customers"] == second["tables"][f"{schema}.customers"]["rows"]
    diff = summary["diff"]
    customers = diff["tables"][f"{schema}.customers"]
    assert customers["inserted"] > 0 and customers["updated"] > 0 and customers["deleted"] > 0
    assert customers["columns_added"] == ["loyalty_tier"]
    assert diff["tables"][f"{schema}.payments"]["deleted"] > 0

    # where to look
    where = summary["where"]
    assert where["mlflow_ui"].startswith("http://")
    assert Path(where["catalog"]).exists() and where["catalog"] in where["duckdb_command"]
    assert where["api_command"].endswith("tidelog api serve")
    assert "Verified" in progress and "Where to look" in progress


def _run_printed(command: str) -> str:
    """Run a command exactly as the demo printed it, in a shell that has not activated the
    venv (as after `make demo`); TIDELOG_HOME is the session stack's."""
    venv_bin = os.path.dirname(sys.executable)
    path = ":".join(p for p in os.environ.get("PATH", "").split(":") if p != venv_bin)
    done = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PATH": path or "/usr/bin:/bin"})
    assert done.returncode == 0, (command, done.stdout, done.stderr)
    return done.stdout


def _check_printed_commands(summary: dict[str, Any]) -> None:
    where, schema = summary["where"], summary["names"]["schema"]
    first, second = summary["runs"]
    counts = _run_printed(where["duckdb_command"])
    for run in (first, second):  # the DuckDB CLI of the venv, on the real catalog
        assert str(run["tables"][f"{schema}.customers"]["rows"]) in counts
    assert "email" in _run_printed(where["sql_command"])
    assert first["run_id"] in _run_printed(where["rebuild_command"])
    lineage = _run_printed(where["lineage_command"])
    assert first["snapshot_id"] in lineage and summary["names"]["connector"] in lineage


def test_demo_runs_end_to_end_and_again(settings: Settings,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    code, first_demo, progress = _run_demo(capsys, "--rows", "1200")
    assert code == 0, progress
    _check(first_demo, progress)
    _check_printed_commands(first_demo)
    assert first_demo["timings"]["total"] < 120  # target: under 60 s on a quiet machine

    code, again, progress = _run_demo(capsys, "--rows", "400")
    assert code == 0, progress
    _check(again, progress)
    assert again["names"]["number"] > first_demo["names"]["number"]
    assert again["names"]["schema"] != first_demo["names"]["schema"]
    # the first demo's connector was stopped, then its slot and source schema dropped
    assert again["cleanup"]["connectors_stopped"] == [first_demo["names"]["connector"]]
    slot = first_demo["names"]["connector"].replace("-", "_")
    assert {f"slot {slot}", f"schema {first_demo['names']['schema']}"} <= set(
        again["cleanup"]["dropped"])

    # run 1 of the first demo: its connector, slot and source schema are gone; the
    # archive still rebuilds it exactly
    # (rebuild resolves topics with the settings' prefix, not the run's recorded one)
    demo_settings = dataclasses.replace(settings,
                                        topic_prefix=first_demo["names"]["topic_prefix"])
    report = rebuild(demo_settings, first_demo["runs"][0]["run_id"])
    assert report.verified
    assert report.digest_rebuilt == first_demo["runs"][0]["digest"]
