"""OpenLineage run events for tidelog's jobs: the one place the OpenLineage client is built.

tidelog emits only when the OpenLineage client is configured the standard way —
`OPENLINEAGE_URL` (HTTP), `OPENLINEAGE_CONFIG` or an `openlineage.yml` the client finds,
or `OPENLINEAGE__TRANSPORT__*` variables (console, file, http, kafka, ...) — and never
when `OPENLINEAGE_DISABLED=true`. Jobs live in the namespace `OPENLINEAGE_NAMESPACE`
(default `tidelog`). Datasets use Debezium's own namespaces (`postgres://host:port`,
`kafka://host:port`), so tidelog's events join the graph Debezium's integration draws.
docs/openlineage.md lists the jobs, datasets and facets.

The client is imported only when lineage is enabled (it takes seconds to import); the
custom facets are in `tidelog.openlineage_facets`.

A lineage backend that is down never fails the job it describes: the failure is logged
(with the URL's credentials removed) and the job's own result stands.
"""

from __future__ import annotations

import functools
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "PRODUCER",
    "enabled",
    "job_namespace",
    "postgres_namespace",
    "kafka_namespace",
    "storage_dataset",
    "mlflow_namespace",
    "run_id_for",
    "LineageDataset",
    "Lineage",
    "emit",
    "traced",
]

PRODUCER = "https://github.com/tidelog/tidelog"
# Run ids derived from an MLflow run id: a rebuild can name its original as parent.
_RUN_NAMESPACE = uuid.UUID("6f1c1f5e-4b3a-5d2e-9c0b-7a1d2e3f4a5b")
_LOG = logging.getLogger("tidelog.openlineage")
P = ParamSpec("P")
R = TypeVar("R")


# -- naming -------------------------------------------------------------------------

def enabled() -> bool:
    if os.environ.get("OPENLINEAGE_DISABLED", "").strip().lower() == "true":
        return False
    if os.environ.get("OPENLINEAGE_URL") or os.environ.get("OPENLINEAGE_CONFIG"):
        return True
    if any(k.startswith("OPENLINEAGE__TRANSPORT__") for k in os.environ):
        return True
    return any(p.is_file() for p in (Path.cwd() / "openlineage.yml",
                                     Path.home() / ".openlineage" / "openlineage.yml"))


def job_namespace() -> str:
    return os.environ.get("OPENLINEAGE_NAMESPACE") or "tidelog"


def _host_port(host: str | None, port: int | None, default_port: int) -> str:
    return f"{host or 'localhost'}:{port or default_port}"


def postgres_namespace(dsn: str) -> tuple[str, str]:
    """(namespace, database) of a libpq DSN, as OpenLineage and Debezium name Postgres."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(dsn)
    except Exception:  # noqa: BLE001  (a DSN we cannot parse names no server)
        return "postgres://unknown:5432", ""
    host = str(params.get("host") or "localhost").split(",")[0]
    if host.startswith("/"):
        host = "localhost"  # a Unix socket: the server is this machine
    port = str(params.get("port") or "5432").split(",")[0]
    return f"postgres://{host}:{port}", str(params.get("dbname") or params.get("user") or "")


def kafka_namespace(bootstrap_servers: str) -> str:
    first = bootstrap_servers.split(",")[0].strip()
    first = first.split("://", 1)[-1]  # SASL_SSL://host:port listener forms
    return f"kafka://{first or 'localhost:9092'}"


def storage_dataset(root: str, *parts: str) -> tuple[str, str]:
    """(namespace, name) of a path under a local or object-store root (OpenLineage naming)."""
    split = urlsplit(root)
    if split.scheme and split.scheme != "file" and split.netloc:
        name = "/".join(p.strip("/") for p in (split.path, *parts) if p.strip("/"))
        host = split.netloc.rpartition("@")[2]  # never a key given as userinfo
        return f"{split.scheme}://{host}", name
    path = Path(split.path if split.scheme == "file" else root).absolute()
    return "file", str(path.joinpath(*parts))


def mlflow_namespace(tracking_uri: str) -> str:
    """The tracking URI without credentials or query: what may appear in a lineage graph."""
    split = urlsplit(tracking_uri)
    if not split.scheme or split.scheme in ("file", "sqlite"):
        return f"mlflow+{split.scheme or 'file'}://{Path(split.path).name or 'local'}"
    host = split.hostname or ""
    netloc = f"{host}:{split.port}" if split.port else host
    return urlunsplit((split.scheme, netloc, split.path.rstrip("/"), "", ""))


def run_id_for(mlflow_run_id: str) -> str:
    """The OpenLineage run id of a tidelog job that logged MLflow run `mlflow_run_id`."""
    return str(uuid.uuid5(_RUN_NAMESPACE, f"mlflow-run:{mlflow_run_id}"))


def _redacted(url: str) -> str:
    split = urlsplit(url)
    if not split.netloc:
        return url
    host = split.hostname or ""
    netloc = f"{host}:{split.port}" if split.port else host
    return urlunsplit((split.scheme, netloc, split.path, "", ""))


# -- events -------------------------------------------------------------------------

@dataclass(frozen=True)
class LineageDataset:
    namespace: str
    name: str
    facets: Mapping[str, Any] = field(default_factory=dict)
    input_facets: Mapping[str, Any] = field(default_factory=dict)
    version: str | None = None


@dataclass(frozen=True)
class Lineage:
    """What one run read and wrote, and what to say about the run itself."""

    inputs: tuple[LineageDataset, ...] = ()
    outputs: tuple[LineageDataset, ...] = ()
    run_facets: Mapping[str, Any] = field(default_factory=dict)
    run_id: str | None = None  # None: the run id chosen when the job started
    parent: tuple[str, str] | None = None  # (job name, run id) in this job namespace


def _client() -> Any:
    from openlineage.client import OpenLineageClient

    return OpenLineageClient()


def _dataset(item: LineageDataset, output: bool) -> Any:
    from openlineage.client.event_v2 import InputDataset, OutputDataset
    from openlineage.client.facet_v2 import dataset_version_dataset

    facets = dict(item.facets)
    if item.version is not None:
        facets["version"] = dataset_version_dataset.DatasetVersionDatasetFacet(
            datasetVersion=item.version)
    if output:
        return OutputDataset(namespace=item.namespace, name=item.name, facets=facets)
    return InputDataset(namespace=item.namespace, name=item.name, facets=facets,
                        inputFacets=dict(item.input_facets))


def _event(state: str, job: str, run_id: str, when: datetime, lineage: Lineage | None,
           error: BaseException | None = None) -> Any:
    from openlineage.client.event_v2 import Job, Run, RunEvent, RunState
    from openlineage.client.facet_v2 import error_message_run, parent_run

    facets: dict[str, Any] = dict(lineage.run_facets) if lineage else {}
    if lineage and lineage.parent:
        parent_job, parent_id = lineage.parent
        facets["parent"] = parent_run.ParentRunFacet(
            run=parent_run.Run(runId=parent_id),
            job=parent_run.Job(namespace=job_namespace(), name=parent_job))
    if error is not None:
        facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
            message=str(error)[:2000], programmingLanguage="python")
    return RunEvent(
        eventType=getattr(RunState, state), eventTime=when.isoformat(), producer=PRODUCER,
        run=Run(runId=run_id, facets=facets), job=Job(namespace=job_namespace(), name=job),
        inputs=[_dataset(d, False) for d in (lineage.inputs if lineage else ())],
        outputs=[_dataset(d, True) for d in (lineage.outputs if lineage else ())])


def emit(events: Iterable[Any]) -> None:
    """Send events; a lineage backend that fails is logged, never raised."""
    try:
        client = _client()
        for event in events:
            client.emit(event)
        client.close(timeout=10)
    except Exception as exc:  # noqa: BLE001  (lineage is a side channel)
        target = _redacted(os.environ.get("OPENLINEAGE_URL", "the configured transport"))
        _LOG.warning("could not send OpenLineage events to %s: %s", target,
                     type(exc).__name__)


def traced(job: str, describe: Callable[..., Lineage | None],
           before: Callable[..., Any] | None = None
           ) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Emit START and COMPLETE (described by `describe(result, prepared, *args, **kwargs)`,
    where `prepared = before(*args, **kwargs)`), or START and FAIL.

    Both events are sent when the job ends, the START one carrying the start time: what a
    run read, wrote and (for training) its run id are only known then. `describe` may
    return None: nothing happened worth a lineage event (an archiver pass with no news).
    """
    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if not enabled():
                return fn(*args, **kwargs)
            started = datetime.now(UTC)
            run_id = str(uuid.uuid4())
            prepared = _quietly(before, *args, **kwargs) if before else None
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                emit([_event("START", job, run_id, started, None),
                      _event("FAIL", job, run_id, datetime.now(UTC), None, exc)])
                raise
            lineage = _quietly(describe, result, prepared, *args, **kwargs)
            if lineage is not None:
                final_id = lineage.run_id or run_id
                emit([_event("START", job, final_id, started, lineage),
                      _event("COMPLETE", job, final_id, datetime.now(UTC), lineage)])
            return result
        return wrapper
    return decorate


def _quietly(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001  (never fail the job for its lineage)
        _LOG.warning("could not describe %s for OpenLineage: %s", getattr(fn, "__name__", fn),
                     exc)
        return None
