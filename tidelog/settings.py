"""Where tidelog finds Postgres, Kafka, Kafka Connect, MLflow and its own storage.

Every setting is a typed field of one section below, read with pydantic-settings:

- `CoreEnv` (`TIDELOG_*`): what every command uses. Precedence, highest first:
  environment variables, the config file (`$TIDELOG_CONFIG`, else
  `$TIDELOG_HOME/config.toml`), the running local stack (`$TIDELOG_HOME/stack.json`),
  then the defaults here. `load_settings` resolves it into `Settings`.
- `ProcessEnv`: where tidelog keeps its state, and the crash hook tests use.
- `StackEnv`: the local stack `tidelog stack up` starts (binaries, heap).
- `api.config.ApiEnv` (`TIDELOG_API_*`): the API server process.

Extra confluent-kafka client settings (SASL, TLS, ...) pass through untouched from the
`[kafka]` table of the config file or from `TIDELOG_KAFKA__<NAME>` variables (`__` stands
for `.`), e.g. `TIDELOG_KAFKA__SECURITY__PROTOCOL=SASL_SSL`.

docs/configuration.md is generated from these fields (`python -m tidelog.docgen
configuration`), and a test fails when it is out of date.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from tidelog.errors import ConfigError
from tidelog.redact import redact_url

__all__ = ["Settings", "KafkaValue", "CoreEnv", "ProcessEnv", "StackEnv", "KAFKA_PASSTHROUGH",
           "env_name", "section_variables", "load_settings", "home_dir", "read_section"]

# What confluent-kafka accepts as a client config value (AdminClient is typed with it).
KafkaValue = str | int | float | bool

KAFKA_PASSTHROUGH = "TIDELOG_KAFKA__"
S = TypeVar("S", bound=BaseSettings)
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")  # a scheme, as in `s3://`


class CoreEnv(BaseSettings):
    """Connections and storage: environment, then config file, then the local stack."""

    model_config = SettingsConfigDict(env_prefix="TIDELOG_", env_ignore_empty=True,
                                      extra="forbid", frozen=True)

    postgres_dsn: str = Field("", description=(
        "`postgresql://user:password@host:5432/db` (or libpq key/value form) of the source; "
        "it needs `wal_level=logical`"))
    bootstrap_servers: str = Field("", description="Kafka bootstrap servers, `host:port,...`")
    connect_url: str = Field("", description=(
        "Kafka Connect REST URL, e.g. `http://connect:8083`"))
    mlflow_uri: str = Field("", description="MLflow tracking URI")
    topic_prefix: str = Field("tidelog", min_length=1, description=(
        "Debezium `topic.prefix`: tables are captured on `<prefix>.<schema>.<table>`"))
    connector_name: str = Field("tidelog-postgres", min_length=1, description=(
        "the connector's name, also its replication slot and publication"))
    archive_root: str = Field("", description=(
        "archive location: a directory or an object-store URI such as "
        "`s3://bucket/tidelog/archive` (default `$TIDELOG_HOME/archive`)"))
    snapshot_root: str = Field("", description=(
        "where snapshots live: a local directory (default `$TIDELOG_HOME/snapshots`) or "
        "an S3 URI such as `s3://bucket/tidelog/snapshots`, which every snapshot change "
        "reaches (docs/catalog.md \"Snapshots on object storage\")"))
    snapshot_local: str = Field("", description=(
        "with an S3 snapshot root: the local directory tidelog builds in and keeps its "
        "working copy of the snapshots in (default `$TIDELOG_HOME/snapshots`)"))
    snapshot_memory_mb: int | None = Field(None, gt=0, description=(
        "MiB a full snapshot build aims to stay within, shared by the tables it builds at "
        "once; larger tables are built in key-hash buckets (default 4096, at least 1536)"))
    events: bool = Field(False, description=(
        "`on` publishes CloudEvents (dataset ready, model trained, ...) to "
        "`<prefix>.tidelog.events.*` (docs/events.md)"))
    gc_keep_days: float = Field(30.0, ge=0, description=(
        "`tidelog gc` keeps runs and snapshots younger than this many days "
        "(docs/retention.md)"))
    gc_keep_snapshots: int = Field(1, ge=0, description=(
        "`tidelog gc` keeps the newest N snapshots"))

    @field_validator("snapshot_root")
    @classmethod
    def _snapshot_root(cls, value: str) -> str:
        if _URI.match(value) and not value.startswith("s3://"):
            # Path() would take `gs://b/p` for the relative directory `gs:/b/p`.
            raise ValueError(
                "a snapshot root is a local directory or an `s3://bucket/prefix` URI "
                "(S3-compatible servers: add `?endpoint_override=host:port`)")
        return value

    @field_validator("snapshot_local")
    @classmethod
    def _snapshot_local(cls, value: str) -> str:
        if _URI.match(value):
            raise ValueError("the working copy of the snapshots is a local directory")
        return value

    @classmethod
    def settings_customise_sources(
            cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment beats what load_settings passes in (config file over stack.json).
        return env_settings, init_settings


class ProcessEnv(BaseSettings):
    """Where tidelog keeps its state, and the hook crash tests use."""

    model_config = SettingsConfigDict(env_prefix="TIDELOG_", env_ignore_empty=True,
                                      extra="ignore", frozen=True)

    home: Path = Field(Path(".tidelog"), description=(
        "tidelog's own state: stack, archive and snapshots by default, API database, "
        "config file"))
    config: Path | None = Field(None, description=(
        "the config file (default `$TIDELOG_HOME/config.toml`); it must exist when set"))
    crash_at: str = Field("", description=(
        "tests only: comma-separated crash points (tidelog/crashpoints.py) at which the "
        "process exits at once, as after SIGKILL"))


class StackEnv(BaseSettings):
    """The local stack `tidelog stack up` starts."""

    model_config = SettingsConfigDict(env_prefix="TIDELOG_", env_ignore_empty=True,
                                      extra="ignore", frozen=True)

    pg_bin: Path | None = Field(None, description=(
        "directory holding PostgreSQL's server binaries (default: "
        "/usr/lib/postgresql/15/bin, then 16, then `PATH`)"))
    connect_heap: str = Field("768m", pattern=r"^[1-9][0-9]*[kKmMgG]$", description=(
        "Java heap of the Kafka Connect worker (`-Xmx`), e.g. `768m` or `2g`"))


def env_name(section: type[BaseSettings], name: str) -> str:
    return f"{section.model_config.get('env_prefix', '')}{name}".upper()


def section_variables(section: type[BaseSettings]) -> Iterator[tuple[str, str, Any, str]]:
    """(variable, field, default, description) for every field of a section."""
    for name, info in section.model_fields.items():
        yield env_name(section, name), name, info.default, info.description or ""


def read_section(section: type[S], source: str = "the environment", **values: Any) -> S:
    """A section from the environment (and `values` below it); ConfigError when invalid."""
    try:
        return section(**values)
    except ValidationError as exc:
        raise ConfigError(_explain(section, exc, source)) from None


def _explain(section: type[BaseSettings], exc: ValidationError, source: str) -> str:
    parts = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else "?"
        if error["type"] == "extra_forbidden":
            known = sorted(section.model_fields)
            parts.append(f"unknown setting {name!r} (known: {', '.join(known)})")
            continue
        # Typed fields (numbers, switches, sizes) hold no secret; a URI may carry one.
        value = error.get("input")
        shown = (redact_url(value) if isinstance(value, str)
                 and _URI.match(value) else value)
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"{env_name(section, name)} (or `{name}`)={shown!r}: "
                     f"{message[:1].lower()}{message[1:]}")
    return f"invalid settings from {source}: " + "; ".join(parts)


@dataclass(frozen=True)
class Settings:
    home: Path
    postgres_dsn: str = ""
    bootstrap_servers: str = ""
    connect_url: str = ""
    mlflow_uri: str = ""
    topic_prefix: str = "tidelog"
    connector_name: str = "tidelog-postgres"
    archive_root: str = ""
    snapshot_root: str = ""  # the local directory snapshots are built and kept in
    snapshot_remote: str = ""  # an S3 root mirroring them (snapshotter/mirror.py), or ""
    snapshot_memory_mb: int | None = None  # what a full snapshot build aims to stay within
    events: bool = False  # publish CloudEvents to <prefix>.tidelog.events.* (docs/events.md)
    gc_keep_days: float = 30.0  # `tidelog gc`: runs and snapshots this young are kept
    gc_keep_snapshots: int = 1  # `tidelog gc`: the newest N snapshots are kept
    kafka: dict[str, str] = field(default_factory=dict)

    def kafka_config(self, **extra: KafkaValue) -> dict[str, KafkaValue]:
        """confluent-kafka client config: bootstrap servers + pass-through + extras."""
        if not self.bootstrap_servers:
            raise ConfigError(
                "no Kafka bootstrap servers configured: start the local stack with "
                "`tidelog stack up` or set TIDELOG_BOOTSTRAP_SERVERS"
            )
        config: dict[str, KafkaValue] = {"bootstrap.servers": self.bootstrap_servers}
        config.update(self.kafka)
        config.update(extra)
        return config

    def to_environ(self) -> dict[str, str]:
        """The `TIDELOG_*` variables that make a child process load these same settings."""
        environ = {env_name(ProcessEnv, "home"): str(self.home)}
        for name in CoreEnv.model_fields:
            value = self._env_value(name)
            if isinstance(value, bool):
                environ[env_name(CoreEnv, name)] = "on" if value else "off"
            elif value not in (None, ""):
                environ[env_name(CoreEnv, name)] = str(value)
        for key, value in self.kafka.items():
            environ[KAFKA_PASSTHROUGH + key.upper().replace(".", "__")] = value
        return environ

    def _env_value(self, name: str) -> object:
        # With an S3 root, `snapshot_root` holds the local working copy.
        if name == "snapshot_root" and self.snapshot_remote:
            return self.snapshot_remote
        if name == "snapshot_local":
            return self.snapshot_root if self.snapshot_remote else ""
        return getattr(self, name)

    @property
    def snapshot_location(self) -> str:
        """Where readers find the snapshots: the S3 root if there is one, else the local."""
        return self.snapshot_remote or self.snapshot_root

    def require(self, name: str) -> str:
        value = getattr(self, name)
        if not value:
            raise ConfigError(
                f"setting {name!r} is not configured: start the local stack with "
                f"`tidelog stack up`, or set {env_name(CoreEnv, name)} (or `{name}` in the "
                "config file)"
            )
        return str(value)


def home_dir() -> Path:
    return read_section(ProcessEnv).home.absolute()


def _stack_values(home: Path) -> dict[str, str]:
    state = home / "stack.json"
    if not state.exists():
        return {}
    try:
        data = json.loads(state.read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.get("endpoints", {}).items()
            if isinstance(v, str) and k in CoreEnv.model_fields}


def _file_values(home: Path) -> tuple[Path, dict[str, Any], dict[str, str]]:
    configured = read_section(ProcessEnv).config
    path = configured or home / "config.toml"
    if not path.exists():
        if configured is not None:
            raise ConfigError(f"TIDELOG_CONFIG points at {path}, which does not exist")
        return path, {}, {}
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    kafka = {str(k): str(v) for k, v in data.pop("kafka", {}).items()}
    return path, data, kafka


def load_settings(home: Path | None = None) -> Settings:
    home = home or home_dir()
    path, file_values, kafka = _file_values(home)
    below_env = {**_stack_values(home), **file_values}
    core = read_section(CoreEnv, f"the environment or {path}", **below_env)
    for env, value in os.environ.items():
        if env.startswith(KAFKA_PASSTHROUGH):
            kafka[env.removeprefix(KAFKA_PASSTHROUGH).lower().replace("__", ".")] = value
    values = core.model_dump()
    local = values.pop("snapshot_local")
    if values["snapshot_root"].startswith("s3://"):
        values["snapshot_remote"], values["snapshot_root"] = values["snapshot_root"], local
    elif local:
        raise ConfigError(
            f"{env_name(CoreEnv, 'snapshot_local')} is the working copy of an S3 snapshot "
            f"root, but {env_name(CoreEnv, 'snapshot_root')} is a local directory: unset "
            "one of them")
    settings = Settings(home=home, kafka=kafka, **values)
    if not settings.archive_root:
        settings = replace(settings, archive_root=str(home / "archive"))
    if not settings.snapshot_root:
        settings = replace(settings, snapshot_root=str(home / "snapshots"))
    return settings
