"""Request and response bodies, as published in the OpenAPI document.

Inputs are validated strictly here (identifier patterns, bounded integers), so that bad
input is a 422 with a field path before any core code runs. Outputs mirror the core's own
`to_json()` shapes; where the core may add keys later, models allow extra fields.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    model_validator,
)

__all__ = [
    "IsoDateTime", "TableName", "SnapshotId", "RunId", "ModelName", "CutIn", "SnapshotCreate",
    "TrainRequest", "RebuildOptions", "ConnectorApply", "ConnectorRestart",
    "PinRequest",
    "KeyCreate", "ManifestOut", "SnapshotSummary", "SnapshotPage", "JobOut", "JobPage",
    "VerifyReport", "DiffReport", "PinOut", "DeleteOut", "RunOut", "ModelLineageOut",
    "RowLineageOut", "ConnectorStatusOut", "ArchiveStatusOut", "ArchiveVerifyReport",
    "LiveOut", "ReadyOut", "KeyOut", "KeyCreated", "KeyList", "AuditEntryOut", "AuditPage",
    "AuditHead",
    "AuditVerifyReport", "PredictRequest", "PredictOut",
]

MAX_INT64 = 2**63 - 1
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}([T ].*)?$")


def _iso_only(value: Any) -> Any:
    # pydantic would also read "0.5" as seconds since 1970; a filter wants a date.
    if isinstance(value, str) and not _ISO.match(value):
        raise ValueError("expected an ISO 8601 date-time, e.g. 2025-01-31T12:00:00Z")
    return value


IsoDateTime = Annotated[dt.datetime, BeforeValidator(_iso_only)]
TABLE_PATTERN = r"^[A-Za-z_][A-Za-z0-9_$]{0,62}\.[A-Za-z_][A-Za-z0-9_$]{0,62}$"

TableName = Annotated[str, Field(pattern=TABLE_PATTERN, examples=["public.customers"])]
SnapshotId = Annotated[str, Field(pattern=r"^[0-9a-f]{16}$", examples=["3f2a9c1b7d4e5f60"])]
RunId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
ModelName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-][A-Za-z0-9_.\- /]{0,199}$",
                                 examples=["churn"])]
Identifier = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]{1,200}$")]
Experiment = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\- /]{1,200}$")]
Offset = Annotated[int, Field(ge=0, le=MAX_INT64)]
ParamValue = (StrictStr | StrictInt
              | Annotated[float, Field(strict=True, allow_inf_nan=False)])


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


# -- cuts ------------------------------------------------------------------------------

class PartitionCutIn(_In):
    topic: Annotated[str, Field(pattern=r"^[A-Za-z0-9._\-]{1,249}$")]
    partition: Annotated[int, Field(ge=0, le=2**31 - 1)]
    end: Offset
    start: Offset = 0
    cluster_id: Annotated[str, Field(max_length=200)] = ""
    topic_id: Annotated[str, Field(max_length=200)] = ""

    @model_validator(mode="after")
    def _ordered(self) -> PartitionCutIn:
        if self.start > self.end:
            raise ValueError("start must not be greater than end")
        return self


class CutIn(_In):
    """A cut as `tidelog` prints it: exclusive end offsets per topic-partition."""

    partitions: Annotated[list[PartitionCutIn], Field(min_length=1, max_length=10_000)]
    lsn: Offset | None = None
    commit_time_ms: Offset | None = None
    transaction_aligned: StrictBool = False


class PartitionCutOut(_Out):
    topic: str
    partition: int
    start: int
    end: int
    cluster_id: str
    topic_id: str


class CutOut(_Out):
    partitions: list[PartitionCutOut]
    lsn: int | None = None
    commit_time_ms: int | None = None
    transaction_aligned: bool = False


# -- requests --------------------------------------------------------------------------

class SnapshotCreate(_In):
    tables: Annotated[list[TableName], Field(min_length=1, max_length=200)]
    at: Literal["latest"] | CutIn = "latest"
    allow_stale: StrictBool = Field(
        False, description="take a 'latest' cut even while capture is failing or behind "
        "the source; the cut records why (stale_allowed)")


class TrainRequest(_In):
    recipe: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.]{0,199}:[A-Za-z_]"
                                         r"[A-Za-z0-9_.]{0,199}$",
                                 examples=["examples.churn:train"])]
    snapshot_id: SnapshotId | None = None
    at: Literal["latest"] | CutIn | None = None
    tables: Annotated[list[TableName], Field(min_length=1, max_length=200)] | None = None
    params: Annotated[dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]{1,100}$")],
                           ParamValue], Field(max_length=200)] = Field(default_factory=dict)
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = 0
    register_as: ModelName | None = Field(
        default=None, description="register the model in MLflow under this name")
    since: RunId | CutIn | None = None
    experiment: Experiment = "tidelog"

    @model_validator(mode="after")
    def _one_source(self) -> TrainRequest:
        if self.snapshot_id is not None and self.at is not None:
            raise ValueError("give snapshot_id (train on an existing snapshot) or at "
                             "(create one), not both")
        return self


class RebuildOptions(_In):
    """The optional body of `POST /runs/{run_id}/rebuild`."""

    experiment: Experiment = "tidelog"
    without_erased: Annotated[StrictBool, Field(
        description="a run an erasure changed: rebuild its cut minus the erased subjects "
                    "as a new linked run (docs/erasure.md)")] = False


class AuditHead(_Out):
    seq: int
    hash: str


class AuditVerifyReport(_Out):
    ok: bool
    entries: int
    first_broken_seq: int | None
    reason: str | None
    head: AuditHead | None


class ConnectorApply(_In):
    tables: Annotated[list[TableName], Field(min_length=1, max_length=200)]
    name: Identifier | None = None
    topic_prefix: Identifier | None = None
    timeout: Annotated[float, Field(gt=0, le=600)] = 120.0
    replica_identity_full: bool = Field(
        False, description="ALTER TABLE ... REPLICA IDENTITY FULL first, so updates carry "
                           "unchanged large (TOASTed) values")


class ConnectorRestart(_In):
    name: Identifier | None = None
    timeout: Annotated[float, Field(gt=0, le=600)] = 120.0


class GcRequest(_In):
    """The body of `POST /gc`; a dry run unless `dry_run` is false."""

    dry_run: StrictBool = True
    keep_days: Annotated[float | None, Field(ge=0, le=36_500, strict=True)] = None
    keep_snapshots: Annotated[StrictInt | None, Field(ge=0, le=100_000)] = None


class PinRequest(_In):
    reason: Annotated[str, Field(max_length=500)] = ""


class KeyCreate(_In):
    role: Literal["reader", "writer", "admin"]
    name: Annotated[str, Field(max_length=100)] = ""


class ErasureCreate(_In):
    table: TableName
    key: Annotated[dict[Annotated[str, Field(min_length=1, max_length=63)],
                        ParamValue | StrictBool],
                   Field(min_length=1, max_length=32,
                         description='the primary key: column -> scalar, e.g. {"id": 42}')]
    reason: Annotated[str, Field(min_length=1, max_length=2000)]
    dry_run: StrictBool = False


# -- responses -------------------------------------------------------------------------

class TableManifestOut(_Out):
    name: str
    topic: str
    rows: int
    columns: list[list[str]]
    key_columns: list[str]
    digest: str
    files: list[str]
    delete_files: list[str] = []
    delta_files: list[str] = []
    content_digest: str = ""
    schema_digest: str = ""
    checksums: dict[str, str] = {}
    file_stats: dict[str, list[int]] = {}


class PinOut(_Out):
    snapshot_id: str
    pinned: bool
    pinned_by: str | None = None
    pinned_at: str | None = None
    reason: str | None = None


class ManifestOut(_Out):
    format_version: int
    id: str
    cut: CutOut
    tables: dict[str, TableManifestOut]
    digest: str
    created_at: str
    tidelog_version: str
    built_from: str
    source: dict[str, Any]
    pinned: bool
    pin: PinOut | None = None


class SnapshotSummary(_Out):
    id: str
    created_at: str
    tables: list[str]
    rows: int
    digest: str
    built_from: str
    cut: CutOut
    pinned: bool


class SnapshotPage(_Out):
    items: list[SnapshotSummary]
    next_cursor: str | None


class JobOut(_Out):
    id: str
    kind: str
    state: Literal["queued", "running", "succeeded", "failed"]
    params: dict[str, Any]
    plan: dict[str, Any] | None
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    created_by: str
    attempts: int
    links: dict[str, str]


class JobPage(_Out):
    items: list[JobOut]
    next_cursor: str | None


class ArchiveVerifyReport(_Out):
    ok: bool
    segments_checked: int
    damaged: list[str]
    hint: str | None = None


class VerifyReport(_Out):
    id: str
    ok: bool
    digest_recorded: str
    digest_recomputed: str | None
    tables: dict[str, dict[str, Any]]


class DiffTable(_Out):
    inserted: int
    updated: int
    deleted: int
    examples: dict[str, list[Any]]
    columns_added: list[str]
    columns_dropped: list[str]


class DiffReport(_Out):
    a: str
    b: str
    tables: dict[str, DiffTable]


class GcReport(_Out):
    dry_run: bool
    policy: dict[str, Any]
    keep: dict[str, Any]
    delete: dict[str, Any]


class DeleteOut(_Out):
    deleted: str


class RunOut(_Out):
    run_id: str
    snapshot_id: str
    cut: CutOut
    digest: str
    tables: dict[str, dict[str, Any]]
    recipe: dict[str, Any]
    params: dict[str, Any]
    seed: int
    rebuild_of: str | None
    verification: dict[str, bool] | None
    rebuilds: list[dict[str, Any]]


class ModelLineageOut(_Out):
    model: dict[str, Any]
    run_id: str
    snapshot_id: str
    cut: CutOut
    digest: str
    tables: dict[str, dict[str, Any]]
    rebuilds: list[dict[str, Any]]


class RowSnapshotOut(_Out):
    snapshot_id: str
    created_at: str
    present: bool
    version: str | None
    rows: list[dict[str, Any]]
    runs: list[dict[str, Any]]


class RowLineageOut(_Out):
    table: str
    key: dict[str, Any]
    snapshots: list[RowSnapshotOut]


class ConnectorStatusOut(_Out):
    name: str
    connector: dict[str, Any]
    tasks: list[dict[str, Any]]


class ArchivePartitionOut(_Out):
    topic: str
    partition: int
    generation: int
    high_water_mark: int
    segments: int
    log_identity: dict[str, Any]
    broker_end_offset: int | None
    lag: int | None
    same_log_as_broker: bool | None


class ArchiveStatusOut(_Out):
    archive_root: str
    broker: dict[str, Any]
    partitions: list[ArchivePartitionOut]


class LiveOut(_Out):
    status: Literal["ok"]


class ReadyOut(_Out):
    status: Literal["ready"]
    checks: dict[str, dict[str, Any]]


class KeyOut(_Out):
    id: str
    name: str
    role: str
    created_at: str
    created_by: str
    revoked_at: str | None
    revoked_by: str | None
    active: bool


class KeyCreated(KeyOut):
    key: str = Field(description="The secret token. Shown only in this response.")


class KeyList(_Out):
    items: list[KeyOut]


class AuditEntryOut(_Out):
    seq: int
    at: str
    actor: str
    role: str | None
    action: str
    method: str
    path: str
    target: str | None
    status: int
    result: str
    error_code: str | None
    job_id: str | None
    request_id: str | None
    client: str | None
    hash: str | None = None


class AuditPage(_Out):
    items: list[AuditEntryOut]
    next_cursor: str | None


class ErasureOut(_Out):
    erasure_id: str | None
    table: str
    dry_run: bool
    segments: list[str]
    snapshots: dict[str, Any]
    runs: dict[str, Any]
    model_versions: list[dict[str, str]]
    cannot_erase: dict[str, Any]
    resumed: list[str]
    notes: list[str]


class ErasureList(_Out):
    items: list[dict[str, Any]]
    pending: list[str]
    chain: dict[str, Any]


# -- serving ---------------------------------------------------------------------------

class PredictRequest(_In):
    instances: Annotated[list[dict[str, Any]], Field(
        min_length=1, max_length=10_000,
        description="feature name -> value, one object per instance (docs/serving.md)")]
    alias: Identifier = "champion"


class PredictedModelOut(_Out):
    name: str
    version: str
    run_id: str
    alias: str


class PredictOut(_Out):
    model: PredictedModelOut
    snapshot_id: str
    cut_digest: str
    predictions: list[Any]
