"""Archive and snapshot storage on a local directory or S3-compatible object storage.

Local writes go to a temporary name and are renamed into place, so a crash leaves the
old state or the new one; an object-store PUT is atomic by itself.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass

import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from tidelog.crashpoints import crash_point
from tidelog.errors import ArchiveError, ArchiveWriteError

__all__ = ["Storage"]


@dataclass
class Storage:
    fs: pafs.FileSystem
    base: str

    @classmethod
    def open(cls, root: str) -> Storage:
        try:
            if "://" in root:
                fs, base = pafs.FileSystem.from_uri(root)
            else:
                fs, base = pafs.LocalFileSystem(), os.path.abspath(root)
        except (pa.ArrowInvalid, OSError) as exc:
            raise ArchiveError(f"cannot open storage at {root}: {exc}") from exc
        return cls(fs, base.rstrip("/"))

    @property
    def local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        return "/".join([self.base, *parts])

    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def listdir(self, path: str) -> list[str]:
        """Names directly under `path` (empty when it does not exist)."""
        info = self.fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        return sorted(i.base_name for i in info)

    def makedirs(self, path: str) -> None:
        self.fs.create_dir(path, recursive=True)

    def write_bytes(self, path: str, data: bytes, *, step: str | None = None) -> None:
        """Write `path` whole or not at all; ArchiveWriteError when the storage refuses.

        `step` names the crash point (tidelog/crashpoints.py) between the synced temporary
        file and its rename."""
        try:
            self._write_bytes(path, data, step)
        except OSError as exc:
            raise ArchiveWriteError(
                f"writing {path} ({len(data)} bytes) failed: {exc.strerror or exc}; free "
                f"space (or fix permissions) under {self.base}, then rerun `tidelog archive "
                "run`: it resumes after the last complete segment", path=path) from exc

    def _write_bytes(self, path: str, data: bytes, step: str | None) -> None:
        parent = path.rsplit("/", 1)[0]
        self.makedirs(parent)
        if not self.local:
            with self.fs.open_output_stream(path) as out:
                out.write(data)
            return
        tmp = f"{parent}/.tmp-{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            if step:
                crash_point(step)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def read_bytes(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as src:
            return bytes(src.read())

    def read_parquet(self, path: str, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(path, filesystem=self.fs, columns=columns)

    def scan(self, path: str, columns: list[str] | None = None) -> pl.LazyFrame:
        """A lazy frame over one Parquet file: scanned in place locally, fetched remotely."""
        if self.local:
            frame = pl.scan_parquet(path)
            return frame.select(columns) if columns is not None else frame
        return pl.from_arrow(self.read_parquet(path, columns)).lazy()  # type: ignore[union-attr]

    def remove_temporaries(self, path: str) -> None:
        for name in self.listdir(path):
            if name.startswith(".tmp-"):
                self.fs.delete_file(f"{path}/{name}")
