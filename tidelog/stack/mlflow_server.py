"""An MLflow tracking server: SQLite backend store, local artefact store."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx

from tidelog.stack.process import ProcessRecord, spawn, wait_until

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

    wait_until("mlflow", ready, record, timeout=120, what="answering /health")
    return record, uri
