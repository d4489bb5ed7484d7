"""Where tidelog finds Postgres, Kafka, Kafka Connect, MLflow and its own storage.

Precedence, highest first: environment variables (`TIDELOG_*`), the config file
(`$TIDELOG_CONFIG`, else `$TIDELOG_HOME/config.toml`), the running local stack
(`$TIDELOG_HOME/stack.json`), then built-in defaults. Extra confluent-kafka client
settings (SASL, TLS, ...) pass through untouched from the `[kafka]` table of the config
file or from `TIDELOG_KAFKA__<NAME>` variables (`__` stands for `.`), e.g.
`TIDELOG_KAFKA__SECURITY__PROTOCOL=SASL_SSL`.
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

from tidelog.errors import ConfigError

__all__ = ["Settings", "KafkaValue", "load_settings", "home_dir"]

# What confluent-kafka accepts as a client config value (AdminClient is typed with it).
KafkaValue = str | int | float | bool

ENV_FIELDS = {
    "TIDELOG_POSTGRES_DSN": "postgres_dsn",
    "TIDELOG_BOOTSTRAP_SERVERS": "bootstrap_servers",
    "TIDELOG_CONNECT_URL": "connect_url",
    "TIDELOG_MLFLOW_URI": "mlflow_uri",
    "TIDELOG_TOPIC_PREFIX": "topic_prefix",
    "TIDELOG_ARCHIVE_ROOT": "archive_root",
    "TIDELOG_SNAPSHOT_ROOT": "snapshot_root",
    "TIDELOG_CONNECTOR_NAME": "connector_name",
    "TIDELOG_SNAPSHOT_MEMORY_MB": "snapshot_memory_mb",
    "TIDELOG_EVENTS": "events",
    "TIDELOG_GC_KEEP_DAYS": "gc_keep_days",
    "TIDELOG_GC_KEEP_SNAPSHOTS": "gc_keep_snapshots",
}


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
    snapshot_root: str = ""
    snapshot_memory_mb: str = ""  # what a full snapshot build aims to stay within
    events: str = ""  # "on": publish CloudEvents to <prefix>.tidelog.events.* (docs/events.md)
    gc_keep_days: str = ""  # `tidelog gc`: runs and snapshots this young are kept (30)
    gc_keep_snapshots: str = ""  # `tidelog gc`: the newest N snapshots are kept (1)
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

    def require(self, name: str) -> str:
        value = getattr(self, name)
        if not value:
            env = next(k for k, v in ENV_FIELDS.items() if v == name)
            raise ConfigError(
                f"setting {name!r} is not configured: start the local stack with "
                f"`tidelog stack up`, or set {env} (or `{name}` in the config file)"
            )
        return str(value)


def home_dir() -> Path:
    return Path(os.environ.get("TIDELOG_HOME", ".tidelog")).absolute()


def _stack_values(home: Path) -> dict[str, str]:
    state = home / "stack.json"
    if not state.exists():
        return {}
    try:
        data = json.loads(state.read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.get("endpoints", {}).items() if isinstance(v, str)}


def _file_values(home: Path) -> tuple[dict[str, str], dict[str, str]]:
    path = Path(os.environ.get("TIDELOG_CONFIG", home / "config.toml"))
    if not path.exists():
        if "TIDELOG_CONFIG" in os.environ:
            raise ConfigError(f"TIDELOG_CONFIG points at {path}, which does not exist")
        return {}, {}
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    kafka = {str(k): str(v) for k, v in data.pop("kafka", {}).items()}
    known = set(ENV_FIELDS.values())
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"config file {path} has unknown settings {unknown}; known: {sorted(known)}"
        )
    return {k: str(v) for k, v in data.items()}, kafka


def load_settings(home: Path | None = None) -> Settings:
    home = home or home_dir()
    values: dict[str, str] = {}
    values.update(_stack_values(home))
    file_values, kafka = _file_values(home)
    values.update(file_values)
    for env, name in ENV_FIELDS.items():
        if os.environ.get(env):
            values[name] = os.environ[env]
    for env, value in os.environ.items():
        if env.startswith("TIDELOG_KAFKA__"):
            kafka[env.removeprefix("TIDELOG_KAFKA__").lower().replace("__", ".")] = value
    settings = Settings(home=home, kafka=kafka, **values)
    if not settings.archive_root:
        settings = replace(settings, archive_root=str(home / "archive"))
    if not settings.snapshot_root:
        settings = replace(settings, snapshot_root=str(home / "snapshots"))
    return settings
