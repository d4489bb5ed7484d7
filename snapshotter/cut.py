"""A cut: exclusive end offsets per topic-partition, in one identified log.

An offset means nothing without the log it belongs to (a recreated topic or a restarted
local broker starts again at 0), so every partition entry carries its log identity.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tidelog.errors import CutError

__all__ = ["PartitionCut", "Cut", "parse_at"]


@dataclass(frozen=True, order=True)
class PartitionCut:
    topic: str
    partition: int
    end: int  # exclusive
    start: int = 0
    cluster_id: str = ""
    topic_id: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "start": self.start,
                "end": self.end, "cluster_id": self.cluster_id, "topic_id": self.topic_id}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PartitionCut:
        try:
            part = cls(topic=str(data["topic"]), partition=int(data["partition"]),
                       end=int(data["end"]), start=int(data.get("start", 0)),
                       cluster_id=str(data.get("cluster_id", "")),
                       topic_id=str(data.get("topic_id", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise CutError(
                f"malformed cut entry {dict(data)!r}: needs topic, partition, end "
                "(and cluster_id, topic_id)") from exc
        if part.start < 0 or part.end < part.start:
            raise CutError(f"cut entry {part.topic}[{part.partition}] has start {part.start} "
                           f"> end {part.end}; offsets must satisfy 0 <= start <= end")
        return part


@dataclass(frozen=True)
class Cut:
    partitions: tuple[PartitionCut, ...]
    lsn: int | None = None  # highest source LSN below the cut
    commit_time_ms: int | None = None  # latest source commit time below the cut
    transaction_aligned: bool = False
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    # Why capture was behind when this "latest" cut was taken with --allow-stale; empty for
    # a current cut. Not part of the cut's identity (canonical, fingerprint, snapshot id).
    stale_allowed: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        seen = set()
        for p in self.partitions:
            if (p.topic, p.partition) in seen:
                raise CutError(f"cut names {p.topic}[{p.partition}] twice")
            seen.add((p.topic, p.partition))

    def ends(self) -> dict[tuple[str, int], int]:
        return {(p.topic, p.partition): p.end for p in self.partitions}

    def starts(self) -> dict[tuple[str, int], int]:
        return {(p.topic, p.partition): p.start for p in self.partitions}

    def for_topics(self, topics: set[str]) -> Cut:
        return Cut(tuple(p for p in self.partitions if p.topic in topics), self.lsn,
                   self.commit_time_ms, self.transaction_aligned,
                   stale_allowed=self.stale_allowed)

    @property
    def is_window(self) -> bool:
        return any(p.start for p in self.partitions)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "partitions": [p.to_json() for p in sorted(self.partitions)],
            "lsn": self.lsn,
            "commit_time_ms": self.commit_time_ms,
            "transaction_aligned": self.transaction_aligned,
        }
        if self.stale_allowed:
            body["stale_allowed"] = list(self.stale_allowed)
        return body

    def canonical(self) -> str:
        body = {"partitions": [p.to_json() for p in sorted(self.partitions)]}
        return json.dumps(body, sort_keys=True, separators=(",", ":"))

    def fingerprint(self) -> str:
        return hashlib.sha256(self.canonical().encode()).hexdigest()

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str) -> Cut:
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except ValueError as exc:
                raise CutError(f"cut is not valid JSON ({exc}); expected "
                               '{"partitions": [{"topic": ..., "partition": 0, "end": N, '
                               '"cluster_id": ..., "topic_id": ...}]}') from exc
        if not isinstance(data, Mapping) or not isinstance(data.get("partitions"), list):
            raise CutError('a cut is an object with a "partitions" list')
        return cls(
            partitions=tuple(PartitionCut.from_json(p) for p in data["partitions"]),
            lsn=data.get("lsn"),
            commit_time_ms=data.get("commit_time_ms"),
            transaction_aligned=bool(data.get("transaction_aligned", False)),
            stale_allowed=tuple(str(r) for r in data.get("stale_allowed") or ()),
        )


def parse_at(value: str | Mapping[str, Any] | Cut | None) -> str | Cut:
    """A cut argument, read the same way by the CLI and the API: None or "latest", a Cut,
    a cut as JSON (text or object), or `@FILE` holding one. Any other word is returned
    as is (`--since` also takes a run id)."""
    if value is None:
        return "latest"
    if isinstance(value, Cut):
        return value
    if isinstance(value, Mapping):
        return Cut.from_json(value)
    text = value
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except OSError as exc:
            raise CutError(f"cannot read the cut file {text[1:]}: {exc.strerror or exc}; "
                           "give a file holding a cut as JSON (e.g. the `cut` of "
                           "`tidelog snapshot show ID --json`)") from exc
    return Cut.from_json(text) if text.lstrip().startswith("{") else text.strip()
