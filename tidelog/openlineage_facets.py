"""tidelog's custom OpenLineage facets; their JSON Schemas are in docs/openlineage/.

Imported only when OpenLineage is enabled (`tidelog.openlineage.enabled`).
"""

from __future__ import annotations

from typing import Any

import attr
from openlineage.client.generated.base import DatasetFacet, InputDatasetFacet, RunFacet

__all__ = ["SCHEMA_BASE", "OffsetsInputFacet", "DigestDatasetFacet", "CutRunFacet",
           "MlflowRunFacet", "ExclusionsRunFacet"]

SCHEMA_BASE = "https://raw.githubusercontent.com/tidelog/tidelog/main/docs/openlineage"


@attr.define
class OffsetsInputFacet(InputDatasetFacet):
    """The offset range read from each partition of a topic, with the log it belongs to."""

    partitions: list[dict[str, Any]] = attr.field(factory=list)

    @staticmethod
    def _get_schema() -> str:
        return f"{SCHEMA_BASE}/OffsetsInputFacet.json#/$defs/OffsetsInputFacet"


@attr.define
class DigestDatasetFacet(DatasetFacet):
    """tidelog's full-content digest of a table (docs/digest.md)."""

    digest: str = ""
    contentDigest: str = ""  # noqa: N815  (OpenLineage facets are camelCase)
    rows: int = 0
    snapshotId: str = ""  # noqa: N815

    @staticmethod
    def _get_schema() -> str:
        return f"{SCHEMA_BASE}/DigestDatasetFacet.json#/$defs/DigestDatasetFacet"


@attr.define
class CutRunFacet(RunFacet):
    """The cut a run read at: its fingerprint, source LSN and transaction alignment."""

    fingerprint: str = ""
    lsn: int | None = None
    commitTimeMs: int | None = None  # noqa: N815
    transactionAligned: bool = False  # noqa: N815

    @staticmethod
    def _get_schema() -> str:
        return f"{SCHEMA_BASE}/CutRunFacet.json#/$defs/CutRunFacet"


@attr.define
class MlflowRunFacet(RunFacet):
    """The MLflow run a tidelog job logged, and where to find it."""

    runId: str = ""  # noqa: N815
    experimentId: str = ""  # noqa: N815
    trackingUri: str = ""  # noqa: N815
    modelUri: str = ""  # noqa: N815
    registeredModelVersion: str | None = None  # noqa: N815

    @staticmethod
    def _get_schema() -> str:
        return f"{SCHEMA_BASE}/MlflowRunFacet.json#/$defs/MlflowRunFacet"


@attr.define
class ExclusionsRunFacet(RunFacet):
    """The exclusion set a training run left out of its snapshot (docs/retention.md)."""

    setId: str = ""  # noqa: N815
    digest: str = ""
    count: int = 0
    rowsRemoved: dict[str, int] = attr.field(factory=dict)  # noqa: N815

    @staticmethod
    def _get_schema() -> str:
        return f"{SCHEMA_BASE}/ExclusionsRunFacet.json#/$defs/ExclusionsRunFacet"
