"""tidelog's REST API: a thin FastAPI layer over cdc, snapshotter and trainer.

`api.app.create_app(settings)` builds the application; `tidelog api serve` runs it.
docs/api.md is the guide (endpoints, auth, jobs, errors, curl examples).
"""

from __future__ import annotations

__all__: list[str] = []
