"""Snapshots on object storage, readable from any DuckDB through httpfs.

`publish_snapshot` copies a local snapshot to `<root>/<id>/` (an `s3://bucket/prefix`
URI, or a local directory): its files first, `manifest.json` last, so a reader that finds
the manifest finds every file. A layered snapshot's data files are its base's, unchanged
(same name, same sha256): they are not copied again but read from the base's own prefix,
which is published first. Which prefix holds a file is decided from the manifests at the
root alone (`locate`), so a reader on another machine needs nothing but the root.

`snapshot_sql` prints DuckDB SQL that opens a snapshot there: the httpfs extension, an
S3 secret whose key comes from the reader's environment (never from this text), and one
view per table — data files minus the keys in `deletes.parquet`, plus `delta.parquet`.
See docs/catalog.md "Remote readers".
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from snapshotter.catalog import view_names
from snapshotter.layout import quote, sql_text, visible_sql
from snapshotter.manifest import MANIFEST_NAME, Manifest
from snapshotter.storage import Storage
from tidelog.errors import ConfigError, SnapshotError, SnapshotNotFound, TidelogError
from tidelog.settings import Settings

__all__ = ["Published", "publish_snapshot", "locate", "plain_root", "snapshot_sql", "upload",
           "CREDENTIALS"]

# How the printed SQL gets the S3 key: `env` reads AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY
# with the DuckDB CLI's getenv(); `chain` is DuckDB's credential chain (aws extension).
CREDENTIALS = ("env", "chain")


@dataclass(frozen=True)
class Published:
    snapshot_id: str
    root: str  # without query parameters
    uploaded: tuple[str, ...]  # snapshot ids whose files this call copied, base first
    files: int
    bytes: int


def _manifest_path(storage: Storage, sid: str) -> str:
    return storage.path(sid, MANIFEST_NAME)


def _remote_manifest(storage: Storage, sid: str) -> Manifest | None:
    path = _manifest_path(storage, sid)
    if not storage.exists(path):
        return None
    return Manifest.loads(storage.read_bytes(path).decode(), path)


Locations = dict[str, dict[str, str]]


def locate(storage: Storage, manifest: Manifest,
           manifests: Callable[[str], Manifest | None] | None = None,
           memo: dict[str, Locations] | None = None) -> Locations:
    """Per table, per file of `manifest`: the snapshot id whose prefix holds it.

    A layered table's data files live where its base's do, when the base is published
    at this root and lists them with the same sha256; everything else is the snapshot's
    own. `manifests` looks a base up (default: at `storage`); `memo` keeps the answer per
    id across calls on the same manifests. The chain of bases is walked, not recursed
    into: it grows by one with every incremental snapshot."""
    find = manifests or (lambda sid: _remote_manifest(storage, sid))
    memo = {} if memo is None else memo
    chain, seen = [manifest], {manifest.id}
    while chain[-1].id not in memo and chain[-1].built_from != "full":
        base = find(chain[-1].built_from)
        if base is None or base.id in seen:
            break
        chain.append(base)
        seen.add(base.id)
    below: Manifest | None = None
    if chain[-1].id in memo:
        below = chain.pop()
    for current in reversed(chain):
        found: Locations = {}
        under = memo[below.id] if below is not None else {}
        for name, table in current.tables.items():
            mine = dict.fromkeys(table.all_files, current.id)
            theirs = below.tables.get(name) if below is not None else None
            if theirs is not None and table.layered:
                for file in table.files:
                    if (file in theirs.all_files and table.checksums.get(file)
                            and theirs.checksums.get(file) == table.checksums.get(file)):
                        mine[file] = under[name][file]
            found[name] = mine
        memo[current.id] = found
        below = current
    return memo[manifest.id]


def publish_snapshot(settings: Settings, sid: str, root: str) -> Published:
    """Copy snapshot `sid` (and the bases its layered tables read) to `root`."""
    from snapshotter.snapshots import open_snapshot

    storage = Storage.open(root)
    uploaded: list[str] = []
    totals = [0, 0]

    def publish(current: str) -> Manifest:
        if (have := _remote_manifest(storage, current)) is not None:
            return have  # manifests are written last: everything else is there
        snapshot = open_snapshot(settings, current)
        for name in snapshot.manifest.tables:
            snapshot.verify(name)  # never publish a file its manifest does not vouch for
        manifest = snapshot.manifest
        if manifest.built_from != "full":
            try:
                publish(manifest.built_from)
            except SnapshotNotFound:
                pass  # base deleted locally: its files are then copied under this id
        owners = locate(storage, manifest)
        for name, table in manifest.tables.items():
            for file in table.all_files:
                if owners[name][file] != current:
                    continue
                source = snapshot.path / file
                upload(storage, source, storage.path(current, file))
                totals[0] += 1
                totals[1] += source.stat().st_size
        storage.write_bytes(_manifest_path(storage, current), manifest.dumps().encode())
        uploaded.append(current)
        return manifest

    try:
        publish(sid)
    except TidelogError:
        raise
    except OSError as exc:
        raise SnapshotError(f"publishing snapshot {sid} to {plain_root(root)} failed: {exc}; "
                            "nothing is visible there until its manifest is written, so "
                            "rerun the same command", snapshot_id=sid) from exc
    return Published(sid, plain_root(root), tuple(uploaded), totals[0], totals[1])


def upload(storage: Storage, source: Path, target: str) -> None:
    """Copy local file `source` to `target` at `storage`, streamed: a data file may be
    larger than memory. An object-store PUT is atomic: the old object or the new."""
    storage.makedirs(target.rsplit("/", 1)[0])
    pafs.copy_files(str(source), target, source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=storage.fs)


def plain_root(root: str) -> str:
    """The root without its query (endpoint options) or userinfo (a key pyarrow accepts
    as `s3://KEY:SECRET@bucket`): what goes in paths, reports and messages."""
    scheme, sep, rest = root.split("?", 1)[0].partition("://")
    if sep:
        rest = rest.rpartition("@")[2] if "@" in rest.split("/", 1)[0] else rest
        return f"{scheme}{sep}{rest}".rstrip("/")
    return scheme.rstrip("/")


def _secret_sql(root: str, credentials: str) -> list[str]:
    parsed = urllib.parse.urlparse(root)
    if parsed.scheme != "s3":
        return []
    query = dict(urllib.parse.parse_qsl(parsed.query))
    options = ["TYPE s3"]
    if credentials == "env":
        options += ["KEY_ID getenv('AWS_ACCESS_KEY_ID')",
                    "SECRET getenv('AWS_SECRET_ACCESS_KEY')"]
    else:
        options += ["PROVIDER credential_chain"]
    if "region" in query:
        options.append(f"REGION {sql_text(query['region'])}")
    if "endpoint_override" in query:
        endpoint = query["endpoint_override"].split("://", 1)[-1]
        options += [f"ENDPOINT {sql_text(endpoint)}", "URL_STYLE 'path'"]
        options.append(f"USE_SSL {'false' if query.get('scheme') == 'http' else 'true'}")
    return ["LOAD httpfs;" if credentials == "env" else "LOAD httpfs; LOAD aws;",
            f"CREATE OR REPLACE SECRET tidelog_s3 ({', '.join(options)});"]


def snapshot_sql(settings: Settings, sid: str, root: str | None = None, *,
                 credentials: str = "env", with_salt: bool = False) -> str:
    """DuckDB SQL creating schema `snap_<id>` with one view per table of snapshot `sid`
    at `root` (default: the local snapshot root). No secret is ever part of it.
    `with_salt`: the views of salted tables also give each row's `__salt`, which the
    digest check of docs/digest.md needs."""
    if credentials not in CREDENTIALS:
        raise ConfigError(f"credentials {credentials!r}: choose one of "
                          f"{', '.join(CREDENTIALS)}")
    if root is None:
        from snapshotter.snapshots import open_snapshot

        snapshot = open_snapshot(settings, sid)
        manifest = snapshot.manifest
        storage = Storage.open(str(snapshot.path.parent))
        owners = {n: dict.fromkeys(t.all_files, sid) for n, t in manifest.tables.items()}
    else:
        storage = Storage.open(root)
        remote = _remote_manifest(storage, sid)
        if remote is None:
            raise SnapshotNotFound(f"no snapshot {sid!r} at {plain_root(root)}; publish it "
                                   f"with `tidelog snapshot publish {sid} --to ROOT`",
                                   snapshot_id=sid)
        manifest = remote
        owners = locate(storage, manifest)
    prefix = "" if storage.local else "s3://"
    schema = quote(f"snap_{sid}")
    lines = [f"-- tidelog snapshot {sid}, cut {manifest.cut.canonical()}"]
    lines += _secret_sql(root or "", credentials)
    lines.append(f"CREATE SCHEMA IF NOT EXISTS {schema};")
    for table, view in view_names(manifest).items():
        where = owners[table]

        def url(name: str, where: dict[str, str] = where) -> str:
            return prefix + storage.path(where[name], name)

        relation = visible_sql(Path(), manifest.tables[table], with_salt=with_salt,
                               locate=url)
        lines.append(f"CREATE OR REPLACE VIEW {schema}.{quote(view)} AS "
                     f"SELECT * FROM {relation};")
    return "\n".join(lines) + "\n"
