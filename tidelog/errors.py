"""The one exception tree of tidelog.

    TidelogError
    ├── ConfigError            settings missing or malformed
    ├── StackError             a local stack component failed to start / stop
    ├── SourceError            Postgres is unreachable or not set up for CDC
    ├── ConnectorError         Kafka Connect rejected or failed a connector
    ├── BrokerError            the Kafka-protocol broker failed a request
    ├── DecodeError            a change event could not be decoded
    ├── ArchiveError           the change-log archive is inconsistent or unreadable
    │   ├── LogIdentityError   offsets from two different logs would be mixed
    │   └── PoisonEventError   a partition's archiving stopped at an undecodable event
    ├── CutError               a cut is malformed, beyond the archive, or from another log
    │   └── CaptureStale       `--at latest` while capture is failing or behind the source
    ├── SnapshotError          a snapshot is missing, unknown or fails verification
    │   └── DigestMismatch     recomputed content differs from the recorded digest
    ├── TrainingError          a recipe failed, or a run is not tidelog's
    └── ApiError               an HTTP-level error raised by the API layer

Every error carries a message saying what went wrong and what to do next.
`transient` marks errors worth retrying (an unreachable broker), as opposed to terminal
ones (offsets lost to retention).
"""

from __future__ import annotations

__all__ = [
    "TidelogError",
    "ConfigError",
    "StackError",
    "SourceError",
    "ConnectorError",
    "BrokerError",
    "DecodeError",
    "ArchiveError",
    "LogIdentityError",
    "PoisonEventError",
    "CutError",
    "CaptureStale",
    "SnapshotError",
    "DigestMismatch",
    "TrainingError",
    "ApiError",
]


class TidelogError(Exception):
    """Root of every error tidelog raises on purpose."""

    transient: bool = False

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class ConfigError(TidelogError):
    pass


class StackError(TidelogError):
    pass


class SourceError(TidelogError):
    pass


class ConnectorError(TidelogError):
    pass


class BrokerError(TidelogError):
    transient = True


class DecodeError(TidelogError):
    pass


class ArchiveError(TidelogError):
    pass


class LogIdentityError(ArchiveError):
    pass


class PoisonEventError(ArchiveError):
    pass


class CutError(TidelogError):
    pass


class CaptureStale(CutError):
    pass


class SnapshotError(TidelogError):
    pass


class DigestMismatch(SnapshotError):
    pass


class TrainingError(TidelogError):
    pass


class ApiError(TidelogError):
    pass
