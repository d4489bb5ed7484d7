"""Settings of the API process itself (the stack's endpoints stay in `tidelog.settings`).

All come from `TIDELOG_API_*` environment variables, so `docker-compose.yml` and
`tidelog api serve` configure the server the same way:

    TIDELOG_API_AUTH            "on" (default) or "off" (local development only: every
                                request acts as an admin named "anonymous")
    TIDELOG_API_WORKERS         job worker threads (default 2)
    TIDELOG_API_RECIPES         comma-separated module prefixes the API may import recipes
                                from, e.g. "examples,acme.recipes"; unset = no training over
                                HTTP (a recipe is arbitrary code in the API process)
    TIDELOG_API_LINEAGE_TTL     longest a lineage answer is served from memory, in seconds
                                (default 60; 0 = never); see `api.cache`
    TIDELOG_API_DB              the SQLite file holding jobs, keys, pins and the audit log
                                (default: $TIDELOG_HOME/api.db)
    TIDELOG_API_MAX_BODY        largest request body in bytes (default 1048576 = 1 MiB);
                                larger ones are 413, checked after authentication
    TIDELOG_API_AUTH_FAILURES   failed key checks allowed per key id and client address per
                                minute (default 10); beyond it 429 with Retry-After
    TIDELOG_API_PIPELINES       a directory of pipeline files (*.toml) that `/pipelines`
                                lists, evaluates and triggers; unset = no pipelines over
                                HTTP (docs/pipelines.md)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tidelog.errors import ConfigError
from tidelog.settings import Settings

__all__ = ["ApiConfig", "load_api_config"]


@dataclass(frozen=True)
class ApiConfig:
    db_path: Path
    auth: bool = True
    workers: int = 2
    recipe_modules: tuple[str, ...] = ()
    lineage_ttl: float = 60.0
    max_body_bytes: int = 1024 * 1024
    auth_failures_per_minute: int = 10
    pipelines_dir: Path | None = None

    def recipe_allowed(self, reference: str) -> bool:
        module = reference.partition(":")[0]
        return any(module == p or module.startswith(p + ".") for p in self.recipe_modules)


def _bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "on", "true", "yes"):
        return True
    if lowered in ("0", "off", "false", "no"):
        return False
    raise ConfigError(f"{name}={value!r} is not on/off")


def _number(name: str, value: str, cast: type[int] | type[float], low: float) -> int | float:
    try:
        number = cast(value)
    except ValueError as exc:
        raise ConfigError(f"{name}={value!r} is not a number") from exc
    if number < low:
        raise ConfigError(f"{name}={value!r} must be at least {low}")
    return number


def load_api_config(settings: Settings, env: Mapping[str, str] | None = None) -> ApiConfig:
    env = os.environ if env is None else env
    db = env.get("TIDELOG_API_DB") or str(Path(settings.home) / "api.db")
    recipes = tuple(p.strip() for p in env.get("TIDELOG_API_RECIPES", "").split(",")
                    if p.strip())
    pipelines = env.get("TIDELOG_API_PIPELINES", "").strip()
    return ApiConfig(
        db_path=Path(db),
        pipelines_dir=Path(pipelines) if pipelines else None,
        auth=_bool("TIDELOG_API_AUTH", env.get("TIDELOG_API_AUTH", "on")),
        workers=int(_number("TIDELOG_API_WORKERS", env.get("TIDELOG_API_WORKERS", "2"), int, 1)),
        recipe_modules=recipes,
        lineage_ttl=float(_number("TIDELOG_API_LINEAGE_TTL",
                                  env.get("TIDELOG_API_LINEAGE_TTL", "60"), float, 0)),
        max_body_bytes=int(_number("TIDELOG_API_MAX_BODY",
                                   env.get("TIDELOG_API_MAX_BODY", str(1024 * 1024)), int, 1)),
        auth_failures_per_minute=int(_number(
            "TIDELOG_API_AUTH_FAILURES", env.get("TIDELOG_API_AUTH_FAILURES", "10"), int, 1)),
    )
