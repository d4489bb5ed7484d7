"""Settings of the API process itself (the stack's endpoints stay in `tidelog.settings`).

All come from `TIDELOG_API_*` environment variables (the fields of `ApiEnv`, listed in
docs/configuration.md), so `docker-compose.yml` and `tidelog api serve` configure the
server the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from tidelog.settings import Settings, read_section

__all__ = ["ApiConfig", "ApiEnv", "load_api_config"]


class ApiEnv(BaseSettings):
    """`TIDELOG_API_*`: the API server process (docs/configuration.md)."""

    model_config = SettingsConfigDict(env_prefix="TIDELOG_API_", env_ignore_empty=True,
                                      extra="ignore", frozen=True)

    auth: bool = Field(True, description=(
        "`on` (default) or `off` (local development only: every request acts as an admin "
        "named \"anonymous\")"))
    workers: int = Field(2, ge=1, description="job worker threads")
    recipes: str = Field("", description=(
        "comma-separated module prefixes the API may import recipes from, e.g. "
        "`examples,acme.recipes`; unset = no training over HTTP (a recipe is arbitrary code "
        "in the API process)"))
    lineage_ttl: float = Field(60.0, ge=0, description=(
        "longest a lineage answer is served from memory, in seconds (0 = never)"))
    db: Path | None = Field(None, description=(
        "the SQLite file holding jobs, keys, pins and the audit log "
        "(default `$TIDELOG_HOME/api.db`)"))
    max_body: int = Field(1024 * 1024, ge=1, description=(
        "largest request body in bytes; larger ones are 413, checked after authentication"))
    auth_failures: int = Field(10, ge=1, description=(
        "failed key checks allowed per key id and client address per minute; beyond it 429 "
        "with Retry-After"))
    pipelines: Path | None = Field(None, description=(
        "a directory of pipeline files (`*.toml`) that `/pipelines` lists, evaluates and "
        "triggers; unset = no pipelines over HTTP (docs/pipelines.md)"))


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


def load_api_config(settings: Settings) -> ApiConfig:
    env = read_section(ApiEnv)
    return ApiConfig(
        db_path=env.db or Path(settings.home) / "api.db",
        auth=env.auth,
        workers=env.workers,
        recipe_modules=tuple(p.strip() for p in env.recipes.split(",") if p.strip()),
        lineage_ttl=env.lineage_ttl,
        max_body_bytes=env.max_body,
        auth_failures_per_minute=env.auth_failures,
        pipelines_dir=env.pipelines,
    )
