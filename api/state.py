"""Everything one API process holds: settings, the core facade and the durable stores."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from api.audit import AuditLog
from api.config import ApiConfig
from api.core import Core
from api.jobs import JobRunner, JobStore
from api.keys import KeyStore
from api.metrics import Metrics
from api.retention import Pins
from api.store import Database
from serving.predict import Predictor
from tidelog.settings import Settings

__all__ = ["ApiState", "get_state"]


@dataclass
class ApiState:
    settings: Settings
    config: ApiConfig
    core: Core
    db: Database
    keys: KeyStore
    audit: AuditLog
    jobs: JobStore
    runner: JobRunner
    pins: Pins
    metrics: Metrics
    predictor: Predictor


async def get_state(request: Request) -> ApiState:
    state: ApiState = request.app.state.tidelog
    return state
