"""`create_app(settings)`: the FastAPI application over tidelog's core library.

One API process serves one home: it holds an exclusive lock on `<api.db>.lock` while it
runs, which is what lets it treat every job still marked `running` at startup as cut off
by a crash (see `api.jobs`). Run it with `tidelog api serve`; docs/api.md is the guide.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import IO

from fastapi import FastAPI
from fastapi.routing import APIRoute

from api.audit import AuditLog
from api.config import ApiConfig, load_api_config
from api.core import Core
from api.errors import ERROR_RESPONSES, HttpError, install_handlers
from api.guard import Guard
from api.jobs import Job, JobRunner, JobStore
from api.keys import KeyStore
from api.metrics import Metrics
from api.middleware import Observe
from api.operations import job_kinds
from api.responses import JSONBody
from api.retention import Pins
from api.routes import ROUTERS
from api.state import ApiState
from api.store import Database
from serving.predict import Predictor
from tidelog import __version__
from tidelog.redact import install_log_redaction
from tidelog.settings import Settings
from trainer import datasets as _mlflow_with_tidelog_datasets  # noqa: F401
from trainer.provider import SnapshotProvider

__all__ = ["create_app"]

# MLflow (with tidelog's dataset plugins) is imported above, in the importing thread: its
# first import is not thread-safe, and request handlers and jobs import it lazily on
# threads of their own (a concurrent first import broke `GET /erasures` with an
# AttributeError on a partially initialised `mlflow`).

_LOG = logging.getLogger("tidelog.api")

DESCRIPTION = """\
Snapshots, training runs, rebuilds and lineage of tidelog over HTTP.

Send an API key as `Authorization: Bearer <key>` or `X-API-Key: <key>`. Long operations
answer `202` with a job (`GET /jobs/{id}`). Every error has the body
`{"error": {"code", "message", "details"}}`. Guide with curl examples: docs/api.md.
"""


def _lock_home(config: ApiConfig) -> IO[str]:
    path = config.db_path.with_name(config.db_path.name + ".lock")
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise HttpError(503, "api_already_running",
                        f"another tidelog API ({holder}) serves {config.db_path}; stop it, or "
                        "give this one its own TIDELOG_HOME / TIDELOG_API_DB") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    return handle


def create_app(settings: Settings, *, config: ApiConfig | None = None,
               core: Core | None = None, provider: SnapshotProvider | None = None
               ) -> FastAPI:
    """The API for `settings`; `core`/`provider` let tests serve from fakes."""
    install_log_redaction()  # no credential in a URL reaches the API log
    config = config or load_api_config(settings)
    core = core or Core(settings, provider, lineage_ttl=config.lineage_ttl)
    db = Database(config.db_path)
    audit = AuditLog(db)
    jobs = JobStore(db)

    def on_finish(job: Job) -> None:
        if job.state == "succeeded":
            core.lineage_cache.clear()

    runner = JobRunner(jobs, audit, job_kinds(core, config), workers=config.workers,
                       on_finish=on_finish)
    keys = KeyStore(db, failures_per_minute=config.auth_failures_per_minute)
    state = ApiState(settings=settings, config=config, core=core, db=db, keys=keys,
                     audit=audit, jobs=jobs, runner=runner, pins=Pins(db), metrics=Metrics(),
                     predictor=Predictor(settings))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        lock = _lock_home(config)
        try:
            core.lineage_cache.start()
            core.repair_catalog()
            failed, requeued = runner.start()
            if failed or requeued:
                _LOG.warning("jobs cut off by the previous API process: %d failed, %d "
                             "re-queued", len(failed), len(requeued))
            if not config.auth:
                _LOG.warning("API authentication is OFF (TIDELOG_API_AUTH=off): every "
                             "caller is an admin")
            yield
        finally:
            core.lineage_cache.stop()
            runner.stop()
            db.close()
            lock.close()

    app = FastAPI(title="tidelog", version=__version__, description=DESCRIPTION,
                  lifespan=lifespan, default_response_class=JSONBody,
                  responses=ERROR_RESPONSES,
                  generate_unique_id_function=lambda route: route.name.replace(".", "_"))
    app.state.tidelog = state
    install_handlers(app)
    for router in ROUTERS:
        for route in router.routes:
            # The first line of a handler's docstring is its summary in /docs. Set on the
            # router's own routes: FastAPI >= 0.16x does not copy them into app.routes.
            if isinstance(route, APIRoute) and route.endpoint.__doc__:
                route.summary = route.endpoint.__doc__.strip().splitlines()[0]
        app.include_router(router)
    # Added first, so it runs inside Observe: refusals get a request id, metrics, audit.
    app.add_middleware(Guard, state=state, router=app.router)
    app.add_middleware(Observe, state=state)
    return app
