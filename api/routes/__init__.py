"""HTTP routes, one module per resource; each handler validates, calls one core function
or submits one job, and shapes the answer."""

from __future__ import annotations

from api.routes import (
    admin,
    cdc,
    health,
    jobs,
    lineage,
    models,
    monitor,
    pipelines,
    runs,
    snapshots,
    ui,
)

__all__ = ["ROUTERS"]

ROUTERS = [health.router, snapshots.router, runs.router, lineage.router, cdc.router,
           jobs.router, admin.router, ui.router, pipelines.router, monitor.router,
           models.router]
