"""What the archiver and the snapshotter read and wrote, as OpenLineage datasets.

Inputs are the Kafka topics Debezium writes (`kafka://host:port`, named by topic) with the
offset range read from each partition; outputs are the archive's topic directories and the
snapshot's tables, versioned by snapshot id. docs/openlineage.md has the whole picture.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from snapshotter.cut import Cut
from snapshotter.manifest import Manifest
from tidelog.openlineage import (
    Lineage,
    LineageDataset,
    kafka_namespace,
    postgres_namespace,
    storage_dataset,
)
from tidelog.settings import Settings

__all__ = ["archive_marks", "describe_archive", "describe_snapshot", "snapshot_table",
           "cut_facet"]

Marks = Mapping[tuple[str, int], int]


def archive_marks(settings: Settings, *_: Any, **__: Any) -> dict[tuple[str, int], dict[str, Any]]:
    """Each archived partition's high-water mark and log identity, before a pass."""
    from snapshotter.archive import Archive

    return {(str(r["topic"]), int(str(r["partition"]))): r
            for r in Archive(settings.archive_root).status()}


def _offsets(rows: Iterable[dict[str, Any]]) -> Any:
    from tidelog.openlineage_facets import OffsetsInputFacet

    return OffsetsInputFacet(partitions=sorted(rows, key=lambda r: r["partition"]))


def describe_archive(marks: Marks, before: Mapping[tuple[str, int], dict[str, Any]] | None,
                     settings: Settings, *_: Any, **__: Any) -> Lineage | None:
    after = archive_marks(settings)
    moved: dict[str, list[dict[str, Any]]] = {}
    for (topic, partition), end in sorted(marks.items()):
        start = int((before or {}).get((topic, partition), {}).get("high_water_mark", 0))
        if end <= start:
            continue
        row = after.get((topic, partition), {})
        moved.setdefault(topic, []).append({
            "partition": partition, "start": start, "end": end,
            "clusterId": row.get("cluster_id"), "topicId": row.get("topic_id"),
            "generation": row.get("generation")})
    if not moved:
        return None
    kafka = kafka_namespace(settings.bootstrap_servers)
    inputs = tuple(LineageDataset(kafka, topic, input_facets={"tidelog_offsets": _offsets(rows)})
                   for topic, rows in sorted(moved.items()))
    outputs = tuple(LineageDataset(*storage_dataset(settings.archive_root, topic))
                    for topic in sorted(moved))
    return Lineage(inputs=inputs, outputs=outputs)


def cut_facet(cut: Cut) -> Any:
    from tidelog.openlineage_facets import CutRunFacet

    return CutRunFacet(fingerprint=cut.fingerprint(), lsn=cut.lsn,
                       commitTimeMs=cut.commit_time_ms,
                       transactionAligned=cut.transaction_aligned)


def snapshot_table(settings: Settings, manifest: Manifest, table: str) -> LineageDataset:
    """One table of a snapshot: a dataset named by table, versioned by snapshot id."""
    from tidelog.openlineage_facets import DigestDatasetFacet

    t = manifest.tables[table]
    namespace, name = storage_dataset(settings.snapshot_location, table)
    digest = DigestDatasetFacet(digest=t.digest, contentDigest=t.content_digest, rows=t.rows,
                                snapshotId=manifest.id)
    return LineageDataset(namespace, name, facets={"tidelog_digest": digest},
                          version=manifest.id)


def _source_tables(settings: Settings, tables: Sequence[str]) -> tuple[LineageDataset, ...]:
    if not settings.postgres_dsn:
        return ()
    namespace, database = postgres_namespace(settings.postgres_dsn)
    return tuple(LineageDataset(namespace, f"{database}.{t}" if database else t)
                 for t in tables)


def describe_snapshot(manifest: Manifest, _: Any, settings: Settings, *__: Any, **___: Any
                      ) -> Lineage:
    kafka = kafka_namespace(settings.bootstrap_servers) if settings.bootstrap_servers else (
        "kafka://unknown")
    by_topic: dict[str, list[dict[str, Any]]] = {}
    for p in manifest.cut.partitions:
        by_topic.setdefault(p.topic, []).append({
            "partition": p.partition, "start": p.start, "end": p.end,
            "clusterId": p.cluster_id, "topicId": p.topic_id})
    inputs = tuple(LineageDataset(kafka, topic, input_facets={"tidelog_offsets": _offsets(rows)})
                   for topic, rows in sorted(by_topic.items()))
    # The tables' own state in Postgres is what the snapshot reproduces: name them too, in
    # the namespace Debezium's integration gives them, so the graph joins theirs.
    inputs += _source_tables(settings, sorted(manifest.tables))
    outputs = tuple(snapshot_table(settings, manifest, t) for t in sorted(manifest.tables))
    return Lineage(inputs=inputs, outputs=outputs, run_facets={"tidelog_cut":
                                                               cut_facet(manifest.cut)})
