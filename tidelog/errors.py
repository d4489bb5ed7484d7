"""The one exception tree of tidelog.

    TidelogError                    tidelog_error          500
    ├── ConfigError                 not_configured         503
    │   └── PipelineNotFound        pipeline_not_found     404
    ├── StackError                  stack_unavailable      503
    ├── SourceError                 source_not_ready       400
    │   └── SourceUnreachable       source_unavailable     503  transient
    ├── ConnectorError              connector_error        400
    │   ├── ConnectorNotFound       connector_not_found    404
    │   ├── ConnectorRejected       connector_rejected     400
    │   ├── ConnectorFailed         connector_failed       502
    │   └── ConnectUnreachable      connector_unavailable  503  transient
    ├── BrokerError                 broker_error           502
    │   └── BrokerUnreachable       broker_unavailable     503  transient
    ├── DecodeError                 decode_error           500
    ├── ArchiveError                archive_unavailable    503
    │   ├── LogIdentityError        log_identity_changed   409
    │   ├── ArchiveWriteError       archive_write_failed   507
    │   └── PoisonEventError        archive_stalled        503
    ├── CutError                    invalid_cut            400
    │   └── CaptureStale            capture_stale          409
    ├── SnapshotError               snapshot_error         400
    │   ├── SnapshotNotFound        snapshot_not_found     404
    │   ├── SnapshotWriteError      snapshot_write_failed  507
    │   ├── SnapshotMirrorError     snapshot_mirror_failed 502  transient
    │   ├── DigestMismatch          digest_mismatch        409
    │   │   └── DatasetErased       dataset_erased         409
    │   ├── SnapshotPinned          snapshot_pinned        409
    │   ├── SnapshotInUse           snapshot_in_use        409
    │   └── ErasureError            erasure_error          400
    ├── TrainingError               training_error         400
    │   ├── RunNotFound             run_not_found          404
    │   ├── ModelNotFound           model_not_found        404
    │   ├── TableNotFound           table_not_found        404
    │   ├── ExclusionNotFound       exclusion_not_found    404
    │   ├── InvalidInstance         invalid_instance       422
    │   └── TrackingUnavailable     mlflow_unavailable     503  transient
    └── MonitorError                monitor_error          400
        └── NoServedResults         no_served_results      404

The API adds `api.errors.ApiError` (HTTP-level errors that carry their own status) below
the root. Every class carries its machine-readable `code` and its HTTP `status`, so no
caller ever reads message text to tell errors apart; the message says what went wrong
and what to do next. `transient` marks errors worth retrying (an unreachable broker) as
opposed to terminal ones (offsets lost to retention); `tidelog.retry.poll` reads it.
"""

from __future__ import annotations

from tidelog.redact import redact_text

__all__ = [
    "TidelogError",
    "ConfigError",
    "PipelineNotFound",
    "StackError",
    "SourceError",
    "SourceUnreachable",
    "ConnectorError",
    "ConnectorNotFound",
    "ConnectorRejected",
    "ConnectorFailed",
    "ConnectUnreachable",
    "BrokerError",
    "BrokerUnreachable",
    "DecodeError",
    "ArchiveError",
    "LogIdentityError",
    "ArchiveWriteError",
    "PoisonEventError",
    "CutError",
    "CaptureStale",
    "SnapshotError",
    "SnapshotNotFound",
    "SnapshotWriteError",
    "SnapshotMirrorError",
    "DigestMismatch",
    "DatasetErased",
    "SnapshotPinned",
    "SnapshotInUse",
    "ErasureError",
    "TrainingError",
    "RunNotFound",
    "ModelNotFound",
    "TableNotFound",
    "ExclusionNotFound",
    "InvalidInstance",
    "TrackingUnavailable",
    "MonitorError",
    "NoServedResults",
]


class TidelogError(Exception):
    """Root of every error tidelog raises on purpose."""

    code: str = "tidelog_error"
    status: int = 500
    transient: bool = False

    def __init__(self, message: str, **details: object) -> None:
        # Messages quote URLs and DSNs (and third-party messages that quote them): no
        # password or token may reach a reader through an error (tidelog/redact.py).
        message = redact_text(message)
        super().__init__(message)
        self.message = message
        self.details = {k: redact_text(v) if isinstance(v, str) else v
                        for k, v in details.items()}


class ConfigError(TidelogError):
    code = "not_configured"
    status = 503


class PipelineNotFound(ConfigError):
    """No pipeline file of that name where the caller looks for pipelines."""

    code = "pipeline_not_found"
    status = 404


class StackError(TidelogError):
    code = "stack_unavailable"
    status = 503


class SourceError(TidelogError):
    """Postgres is not set up to feed CDC (wal_level, missing table, busy slot, ...)."""

    code = "source_not_ready"
    status = 400


class SourceUnreachable(SourceError):
    code = "source_unavailable"
    status = 503
    transient = True


class ConnectorError(TidelogError):
    code = "connector_error"
    status = 400


class ConnectorNotFound(ConnectorError):
    code = "connector_not_found"
    status = 404


class ConnectorRejected(ConnectorError):
    """Kafka Connect refused the connector's config."""

    code = "connector_rejected"
    status = 400


class ConnectorFailed(ConnectorError):
    """The connector or its task failed, or did not start streaming in time."""

    code = "connector_failed"
    status = 502


class ConnectUnreachable(ConnectorError):
    code = "connector_unavailable"
    status = 503
    transient = True


class BrokerError(TidelogError):
    """The Kafka-protocol broker answered a request with an error."""

    code = "broker_error"
    status = 502


class BrokerUnreachable(BrokerError):
    code = "broker_unavailable"
    status = 503
    transient = True


class DecodeError(TidelogError):
    code = "decode_error"
    status = 500


class ArchiveError(TidelogError):
    """The change-log archive is inconsistent or unreadable."""

    code = "archive_unavailable"
    status = 503


class LogIdentityError(ArchiveError):
    """Offsets from two different logs would be mixed."""

    code = "log_identity_changed"
    status = 409


class ArchiveWriteError(ArchiveError):
    """The archive root could not be written (full disk, permissions)."""

    code = "archive_write_failed"
    status = 507


class PoisonEventError(ArchiveError):
    """A partition's archiving stopped at an event that cannot be decoded."""

    code = "archive_stalled"
    status = 503


class CutError(TidelogError):
    """A cut is malformed, beyond the archive, or from another log."""

    code = "invalid_cut"
    status = 400


class CaptureStale(CutError):
    """`--at latest` while capture is failing, lagging or mid-snapshot."""

    code = "capture_stale"
    status = 409


class SnapshotError(TidelogError):
    code = "snapshot_error"
    status = 400


class SnapshotNotFound(SnapshotError):
    code = "snapshot_not_found"
    status = 404


class SnapshotWriteError(SnapshotError):
    """The snapshot root could not be written (full disk, permissions)."""

    code = "snapshot_write_failed"
    status = 507


class SnapshotMirrorError(SnapshotError):
    """The S3 snapshot root could not be brought in line with the local snapshots."""

    code = "snapshot_mirror_failed"
    status = 502
    transient = True


class DigestMismatch(SnapshotError):
    """Recomputed content differs from the recorded digest or checksum."""

    code = "digest_mismatch"
    status = 409


class DatasetErased(DigestMismatch):
    """A run's data differs from its record because an erasure removed a subject."""

    code = "dataset_erased"
    status = 409


class SnapshotPinned(SnapshotError):
    """A delete of a pinned snapshot: unpin it first."""

    code = "snapshot_pinned"
    status = 409


class SnapshotInUse(SnapshotError):
    """A delete of a snapshot a registered model version was trained on."""

    code = "snapshot_in_use"
    status = 409


class ErasureError(SnapshotError):
    """An erasure request that cannot be carried out as given."""

    code = "erasure_error"
    status = 400


class TrainingError(TidelogError):
    """A recipe failed, or a run is not tidelog's."""

    code = "training_error"
    status = 400


class RunNotFound(TrainingError):
    code = "run_not_found"
    status = 404


class ModelNotFound(TrainingError):
    """No such registered model, or no such version of it."""

    code = "model_not_found"
    status = 404


class TableNotFound(TrainingError):
    """No snapshot holds the table a lineage question names."""

    code = "table_not_found"
    status = 404


class ExclusionNotFound(TrainingError):
    """No active exclusion has the id given (`tidelog exclude --remove`)."""

    code = "exclusion_not_found"
    status = 404


class InvalidInstance(TrainingError):
    """An instance sent for prediction does not fit the model's input signature."""

    code = "invalid_instance"
    status = 422


class TrackingUnavailable(TrainingError):
    """MLflow failed a request (unreachable, or a server-side error)."""

    code = "mlflow_unavailable"
    status = 503
    transient = True


class MonitorError(TidelogError):
    """Monitoring cannot compare a served model with its training data as asked."""

    code = "monitor_error"
    status = 400


class NoServedResults(MonitorError):
    """The results topic holds no result of the monitored model version."""

    code = "no_served_results"
    status = 404
