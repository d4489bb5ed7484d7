"""The archive's event table layout (docs/archive.md): the metadata columns every table
segment starts with, the op classes, and the row salt the archiver appends."""

from __future__ import annotations

import os

import pyarrow as pa

__all__ = [
    "PARTITION", "OFFSET", "OP", "KEY", "LSN", "TXID", "TX", "TS_MS", "BEFORE",
    "METADATA_COLUMNS", "METADATA_NAMES", "SALT", "SALT_TYPE", "with_salts",
    "ROW_HASH", "ROW_HASH_TYPE", "RESERVED_NAMES",
    "UPSERT_OPS", "DELETE_OPS", "TRUNCATE_OP",
]

# The archive's metadata columns, before every table's own: named here, once.
PARTITION, OFFSET, OP, KEY = "__partition", "__offset", "__op", "__key"
LSN, TXID, TX, TS_MS, BEFORE = "__lsn", "__txid", "__tx", "__ts_ms", "__before"
METADATA_COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    (PARTITION, pa.int32()),
    (OFFSET, pa.int64()),
    (OP, pa.string()),
    (KEY, pa.string()),
    (LSN, pa.int64()),
    (TXID, pa.int64()),
    (TX, pa.string()),
    (TS_MS, pa.int64()),
    (BEFORE, pa.string()),
)
METADATA_NAMES = frozenset(name for name, _ in METADATA_COLUMNS)
# A random 16-byte salt per archived change event, added by the archiver after the data
# columns (docs/digest.md, "Salted rows"); a snapshot row keeps its event's salt.
SALT = "__salt"
SALT_TYPE = pa.binary(16)


def with_salts(table: pa.Table) -> pa.Table:
    """`table` with a fresh random salt per row appended as `__salt` (os.urandom)."""
    if SALT in table.column_names:
        raise ValueError(f"{SALT} is already set: salts are drawn once, when archived")
    rows = table.num_rows
    salts = pa.FixedSizeBinaryArray.from_buffers(
        SALT_TYPE, rows, [None, pa.py_buffer(os.urandom(SALT_TYPE.byte_width * rows))])
    return table.append_column(pa.field(SALT, SALT_TYPE), salts)


# Each table event's row hash, computed by the archiver after the salt (docs/digest.md,
# "Row hashes at archive time"): the md5 of the event's salted row text as two 64-bit
# halves, or null where it could not be computed. A full build sums these instead of
# hashing every row again; verify and rebuild always hash the content.
ROW_HASH = "__row_hash"
ROW_HASH_TYPE = pa.struct([("hi", pa.uint64()), ("lo", pa.uint64())])
# Names a source column may not have: the archive's own.
RESERVED_NAMES = METADATA_NAMES | {SALT, ROW_HASH}


# Ops in the archive: Debezium's read/create/update upsert the after image, its delete
# and tidelog's tombstone ("x", a Kafka tombstone) delete the key, a truncate empties it.
UPSERT_OPS = ("r", "c", "u")
DELETE_OPS = ("d", "x")
TRUNCATE_OP = "t"
