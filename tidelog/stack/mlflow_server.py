"""An MLflow tracking server: SQLite backend store, local artefact store."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx

from tidelog.errors import StackError
from tidelog.stack.process import ProcessRecord, spawn, stop, wait_until

__all__ = ["start_mlflow"]


def start_mlflow(root: Path, port: int) -> tuple[ProcessRecord, str]:
    root.mkdir(parents=True, exist_ok=True)
    artifacts = root / "artifacts"
    artifacts.mkdir(exist_ok=True)
    argv = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(artifacts),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]
    # MLflow >= 3.7 also starts a job runner (GenAI scorers, prompt optimisation) that
    # tidelog never uses; on two busy cores it doubled the time to /health (172 s vs 83 s).
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    record = spawn("mlflow", argv, root / "mlflow.log", env=env)
    uri = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        return httpx.get(f"{uri}/health", timeout=2).status_code == 200

    # MLflow 3.17 imports far more than 3.6 before it listens (its server process, then
    # uvicorn re-importing the app): 80-170 s on two cores shared with other suites.
    try:
        wait_until("mlflow", ready, record, timeout=300, what="answering /health")
    except StackError:
        stop(record)  # the caller records only a started server; do not leave this one
        raise
    return record, uri
