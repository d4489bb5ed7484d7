"""tidelog snapshots as MLflow-native datasets, and the notebook API built on them.

MLflow finds these through the entry points in pyproject.toml, so any MLflow client with
tidelog installed can turn a run's dataset input back into the exact rows:

    source = mlflow.data.get_source(run.inputs.dataset_inputs[0])
    frame = source.load()            # polars; load(as_="pandas" | "arrow") for the others

`load()` opens the snapshot if it is still under the snapshot root and its content digest
recomputes to the recorded one; otherwise it re-materialises the recorded cut from the
archive (into `$TIDELOG_HOME/cache/datasets`) and checks that digest instead. It never
returns rows whose digest differs from the one the run recorded. The MLflow dataset digest
is the first 36 hex characters of tidelog's full-content table digest (MLflow's own is
8 characters over the first 10,000 rows); docs/trainer.md has the details.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import parse_qs, urlparse

import duckdb
import polars as pl

from snapshotter.cut import Cut
from snapshotter.digest import ContentSum, digest_with_erased, table_digest
from snapshotter.layout import visible_sql
from snapshotter.manifest import Manifest
from tidelog.errors import DigestMismatch, SnapshotError
from tidelog.settings import Settings, load_settings

with warnings.catch_warnings():
    # Imported before mlflow.data, this module is half-initialised when MLflow loads its
    # entry points: MLflow warns that ours failed and skips them. _register_with_mlflow()
    # at the end registers them instead, so that warning (and only that one) is noise.
    warnings.filterwarnings("ignore", category=UserWarning,
                            message=r".*trainer\.datasets.*circular import")
    from mlflow.data.dataset import Dataset
    from mlflow.data.dataset_source import DatasetSource

__all__ = [
    "SOURCE_TYPE",
    "MLFLOW_DIGEST_CHARS",
    "dataset_cache_dir",
    "TidelogDatasetSource",
    "TidelogDataset",
    "from_tidelog",
    "dataset_for",
    "SnapshotData",
    "open_data",
]

SOURCE_TYPE = "tidelog"
MLFLOW_DIGEST_CHARS = 36  # the width of MLflow's dataset digest column
Frame = Literal["polars", "pandas", "arrow"]


class TidelogDatasetSource(DatasetSource):
    """One table of one snapshot: enough to find it, or to build it again from the archive."""

    def __init__(self, snapshot_id: str, table: str, *, tables: Sequence[str] = (),
                 digest: str = "", cut: Mapping[str, Any] | None = None) -> None:
        self.snapshot_id = snapshot_id
        self.table = table
        self.tables = tuple(sorted(tables or (table,)))
        self.digest = digest
        self.cut = dict(cut or {})

    @property
    def uri(self) -> str:
        fingerprint = Cut.from_json(self.cut).fingerprint() if self.cut else ""
        return f"tidelog://snapshot/{self.snapshot_id}/{self.table}?cut={fingerprint}"

    @staticmethod
    def _get_source_type() -> str:
        return SOURCE_TYPE

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return isinstance(raw_source, str) and raw_source.startswith("tidelog://snapshot/")

    @classmethod
    def _resolve(cls, raw_source: Any) -> TidelogDatasetSource:
        parsed = urlparse(str(raw_source))
        snapshot_id, _, table = parsed.path.strip("/").partition("/")
        if not snapshot_id or not table:
            raise SnapshotError(f"{raw_source!r} is not tidelog://snapshot/<id>/<table>")
        return cls(snapshot_id, table)

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "snapshot_id": self.snapshot_id, "table": self.table,
                "tables": list(self.tables), "digest": self.digest, "cut": self.cut,
                "cut_fingerprint": parse_qs(urlparse(self.uri).query).get("cut", [""])[0]}

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> TidelogDatasetSource:
        if "snapshot_id" not in source_dict:  # an older run's source: only its URI
            return cls._resolve(source_dict["uri"])
        return cls(str(source_dict["snapshot_id"]), str(source_dict["table"]),
                   tables=source_dict.get("tables") or (), digest=source_dict.get("digest", ""),
                   cut=source_dict.get("cut") or None)

    def load(self, as_: Frame = "polars", settings: Settings | None = None) -> Any:
        """The table's exact rows, checked against the recorded digest."""
        settings = settings or load_settings()
        manifest, path = _verified_location(settings, self)
        return _frame(_read(manifest, path, self.table), as_)


class TidelogDataset(Dataset):
    """An MLflow dataset whose digest and profile come from a tidelog manifest."""

    def __init__(self, source: TidelogDatasetSource, manifest: Manifest,
                 name: str | None = None, digest: str | None = None) -> None:
        self._manifest = manifest
        super().__init__(source=source, name=name or source.table, digest=digest)

    @property
    def source(self) -> TidelogDatasetSource:
        # MLflow types its source as the base class; __init__ only takes ours.
        return cast(TidelogDatasetSource, super().source)

    def _compute_digest(self) -> str:
        return str(self._manifest.tables[self.source.table].digest[:MLFLOW_DIGEST_CHARS])

    def to_dict(self) -> dict[str, str]:
        import json

        table = self._manifest.tables[self.source.table]
        return {**super().to_dict(),
                "schema": json.dumps({"tidelog_columns": [list(c) for c in table.columns]}),
                "profile": json.dumps(self.profile)}

    @property
    def profile(self) -> dict[str, Any]:
        table = self._manifest.tables[self.source.table]
        return {"num_rows": table.rows, "tidelog_digest": table.digest,
                "snapshot_digest": self._manifest.digest}

    @property
    def schema(self) -> dict[str, str]:
        return dict(self._manifest.tables[self.source.table].columns)


def dataset_for(manifest: Manifest, table: str, name: str | None = None) -> TidelogDataset:
    """The MLflow dataset of one table of a snapshot tidelog already holds."""
    if table not in manifest.tables:
        raise SnapshotError(f"snapshot {manifest.id} has no table {table!r}; it has "
                            f"{', '.join(sorted(manifest.tables))}")
    source = TidelogDatasetSource(manifest.id, table, tables=sorted(manifest.tables),
                                  digest=manifest.tables[table].digest,
                                  cut=manifest.cut.to_json())
    return TidelogDataset(source, manifest, name=name)


def from_tidelog(snapshot_id: str, table: str, name: str | None = None,
                 digest: str | None = None, settings: Settings | None = None
                 ) -> TidelogDataset:
    """`mlflow.data.from_tidelog(snapshot_id, table)`: the dataset of a stored snapshot.

    `digest`, when given, must match the one tidelog recorded (a guard, not an override).
    """
    from snapshotter.snapshots import open_snapshot

    manifest = open_snapshot(settings or load_settings(), snapshot_id).manifest
    dataset = dataset_for(manifest, table, name)
    if digest is not None and digest != dataset.digest:
        raise DigestMismatch(f"snapshot {snapshot_id} table {table} has MLflow digest "
                             f"{dataset.digest}, not {digest}")
    return dataset


# MLflow checks the constructor's return annotation with issubclass(); postponed
# annotations (`from __future__ import annotations`) leave a string there.
from_tidelog.__annotations__["return"] = TidelogDataset


def dataset_cache_dir(settings: Settings) -> Path:
    """Where datasets rebuilt from the archive are kept (erasure empties it)."""
    return Path(settings.home) / "cache" / "datasets"


def _recomputed(path: Path, manifest: Manifest, table: str) -> str:
    entry = manifest.tables[table]
    con = duckdb.connect()
    try:
        got = table_digest(con, visible_sql(path, entry, with_salt=True))
    except SnapshotError:
        return "unreadable"  # a file lost a column or is no Parquet: not the snapshot
    finally:
        con.close()
    if entry.erased:  # docs/erasure.md: the kept sums of erased rows make up the record
        got = digest_with_erased(got, [ContentSum.parse(e.content_digest, e.rows)
                                       for e in entry.erased])
    return got.digest


def _verified_location(settings: Settings, source: TidelogDatasetSource
                       ) -> tuple[Manifest, Path]:
    """Where the source's rows are, with their digest checked: the snapshot, else a rebuild."""
    from snapshotter.snapshots import open_snapshot, rebuild_snapshot

    expected = source.digest
    try:
        snap = open_snapshot(settings, source.snapshot_id)
    except SnapshotError:
        snap = None
    if snap is not None and source.table in snap.manifest.tables:
        expected = expected or snap.manifest.tables[source.table].digest
        if _recomputed(snap.path, snap.manifest, source.table) == expected:
            return snap.manifest, snap.path
    if not source.cut:
        raise SnapshotError(
            f"snapshot {source.snapshot_id} is not under {settings.snapshot_root} (or fails "
            "its digest), and this dataset source records no cut to rebuild it from: log "
            "the dataset with tidelog 0.1+ (`trainer.datasets.dataset_for`)")
    cache = dataset_cache_dir(settings)
    manifest = rebuild_snapshot(settings, Cut.from_json(source.cut), source.tables, cache)
    path = cache / manifest.id
    got = manifest.tables[source.table].digest if source.table in manifest.tables else ""
    if manifest.id != source.snapshot_id or not expected or got != expected:
        raise DigestMismatch(
            f"rebuilding snapshot {source.snapshot_id} table {source.table} from the archive "
            f"gave digest {got or 'none'} (snapshot {manifest.id}), not the recorded "
            f"{expected or 'none'}: the archive no longer holds that history exactly; "
            "run `tidelog archive verify`")
    return manifest, path


def _read(manifest: Manifest, path: Path, table: str) -> pl.DataFrame:
    from snapshotter.snapshots import Snapshot

    return Snapshot(manifest, path).table(table)


def _frame(frame: pl.DataFrame, as_: Frame) -> Any:
    if as_ == "polars":
        return frame
    if as_ == "arrow":
        return frame.to_arrow()
    if as_ == "pandas":
        from trainer.fingerprint import to_pandas

        return to_pandas(frame)
    raise SnapshotError(f"unknown frame kind {as_!r}: use polars, pandas or arrow")


@dataclass(frozen=True)
class SnapshotData:
    """A snapshot opened for your own training code (docs/trainer.md, "Notebooks")."""

    manifest: Manifest
    path: Path

    @property
    def tables(self) -> list[str]:
        return sorted(self.manifest.tables)

    def polars(self, table: str) -> pl.DataFrame:
        return _frame(_read(self.manifest, self.path, self._known(table)), "polars")

    def pandas(self, table: str) -> Any:
        return _frame(_read(self.manifest, self.path, self._known(table)), "pandas")

    def arrow(self, table: str) -> Any:
        return _frame(_read(self.manifest, self.path, self._known(table)), "arrow")

    def _known(self, table: str) -> str:
        if table not in self.manifest.tables:
            raise SnapshotError(f"snapshot {self.manifest.id} has no table {table!r}; it has "
                                f"{', '.join(self.tables)}")
        return table

    def log_to_mlflow(self, context: str = "training") -> dict[str, str]:
        """Log every table as a dataset input of the active MLflow run, and tag the run
        with the snapshot and cut, so its lineage is as complete as a `tidelog train` run's.
        Returns the tags set."""
        import mlflow

        from trainer.tags import CUT, SNAPSHOT_ID

        if mlflow.active_run() is None:
            raise SnapshotError("no active MLflow run: call this inside `with mlflow.start_run():`")
        for table in self.tables:
            mlflow.log_input(dataset_for(self.manifest, table), context=context)
        tags = {SNAPSHOT_ID: self.manifest.id, CUT: self.manifest.cut.canonical(),
                "tidelog.cut.fingerprint": self.manifest.cut.fingerprint(),
                "tidelog.digest": self.manifest.digest, "tidelog.tables": ",".join(self.tables)}
        mlflow.set_tags(tags)
        return tags


def open_data(snapshot_id: str | None = None, *, tables: Sequence[str] = (),
              at: str | Cut = "latest", settings: Settings | None = None) -> SnapshotData:
    """Open a stored snapshot by id, or create one of `tables` at `at` first."""
    from snapshotter.snapshots import create_snapshot, open_snapshot

    settings = settings or load_settings()
    if snapshot_id is None:
        if not tables:
            raise SnapshotError("pass a snapshot id, or tables=[...] to snapshot now")
        snapshot_id = create_snapshot(settings, tables, at).id
    snap = open_snapshot(settings, snapshot_id)
    for table in snap.manifest.tables:
        if _recomputed(snap.path, snap.manifest, table) != snap.manifest.tables[table].digest:
            raise DigestMismatch(f"snapshot {snapshot_id} table {table} no longer matches its "
                                 "recorded digest: run `tidelog snapshot verify "
                                 f"{snapshot_id}`, or rebuild it from the archive")
    return SnapshotData(snap.manifest, snap.path)


def _register_with_mlflow() -> None:
    """Register the source type and `mlflow.data.from_tidelog` with MLflow now.

    The entry points in pyproject.toml do this when `mlflow.data` is imported first. The
    other way round (this module first, which imports `mlflow.data`), MLflow loads the
    entry points while this module is half-initialised, warns, and skips them; a logged
    tidelog input then no longer loads back. Registering here, once the module is whole,
    holds in either order (a second registration of the same source is harmless).

    MLflow's import is not thread-safe: two threads importing it for the first time at
    once break it (`mlflow.version` missing). Processes with threads import this module
    before starting them, as `api.app` does.
    """
    mlflow_data = getattr(sys.modules.get("mlflow"), "data", None)
    if mlflow_data is None or hasattr(mlflow_data, "from_tidelog"):
        return  # mlflow.data is loading the entry points now, or they already loaded
    from mlflow.data.dataset_registry import register_constructor
    from mlflow.data.dataset_source_registry import register_dataset_source

    # MLflow's own annotations want an instance and a two-argument function; its
    # registries hold the class and call the constructor with keywords, as here.
    register_dataset_source(cast(Any, TidelogDatasetSource))
    register_constructor(cast(Any, from_tidelog), "from_tidelog")


_register_with_mlflow()
