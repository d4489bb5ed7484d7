"""A private PostgreSQL 15 cluster with logical decoding, on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tidelog.adapters import postgres
from tidelog.errors import StackError
from tidelog.settings import StackEnv, read_section
from tidelog.stack.process import ProcessRecord, spawn, wait_until

__all__ = ["pg_bin", "start_postgres", "postgres_dsn"]

PG_BIN_CANDIDATES = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin")
DATABASE = "tidelog"


def pg_bin(tool: str) -> str:
    override = read_section(StackEnv).pg_bin
    for directory in ([str(override)] if override else []) + list(PG_BIN_CANDIDATES):
        candidate = Path(directory) / tool
        if candidate.exists():
            return str(candidate)
    found = shutil.which(tool)
    if found:
        return found
    raise StackError(
        f"postgres: cannot find {tool}; install PostgreSQL 15 server binaries "
        "(apt-get install postgresql-15) or set TIDELOG_PG_BIN",
        component="postgres",
    )


def _run_as() -> str | None:
    # initdb and postgres refuse to run as root; use the distribution's service account.
    return "postgres" if os.geteuid() == 0 else None


def postgres_dsn(port: int) -> str:
    return f"postgresql://postgres@127.0.0.1:{port}/{DATABASE}"


def _initdb(data: Path, log: Path) -> None:
    user = _run_as()
    data.mkdir(parents=True, exist_ok=True)
    if user:
        shutil.chown(data, user=user, group=user)
        data.chmod(0o700)
    cmd = [pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
           "--no-sync", "-E", "UTF8", "--locale=C.UTF-8"]
    with open(log, "ab") as out:
        result = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, user=user)
    if result.returncode != 0:
        raise StackError(f"postgres: initdb failed; see {log}", component="postgres")
    conf = data / "postgresql.conf"
    with open(conf, "a") as fh:
        fh.write(
            "\n# tidelog local stack\n"
            "wal_level = logical\n"
            "max_replication_slots = 20\n"
            "max_wal_senders = 20\n"
            "listen_addresses = '127.0.0.1'\n"
            "fsync = off\n"
            "synchronous_commit = off\n"
            "full_page_writes = off\n"
        )


def start_postgres(root: Path, port: int) -> ProcessRecord:
    data = root / "data"
    log = root / "postgres.log"
    root.mkdir(parents=True, exist_ok=True)
    user = _run_as()
    if user:
        shutil.chown(root, user=user, group=user)
        blocked = [p for p in root.parents if not os.stat(p).st_mode & 0o001]
        if blocked:
            raise StackError(
                f"postgres: the `{user}` user cannot reach {root} because {blocked[0]} is "
                f"not searchable by others; run `chmod o+x {blocked[0]}` or choose another "
                "TIDELOG_HOME", component="postgres")
    if not (data / "PG_VERSION").exists():
        _initdb(data, log)
    # Only called when our postgres is not running: the lock files a killed postmaster
    # left are stale. Its PID may still exist as a zombie (its parent, an earlier
    # `stack up`, is gone), which postgres takes for a live postmaster holding them.
    for stale in (data / "postmaster.pid", root / f".s.PGSQL.{port}.lock"):
        stale.unlink(missing_ok=True)
    record = spawn(
        "postgres",
        [pg_bin("postgres"), "-D", str(data), "-p", str(port), "-k", str(root)],
        log,
        user=user,
    )

    def ready() -> bool:
        with postgres.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres",
                              connect_timeout=2) as conn:
            exists = conn.execute(
                "select 1 from pg_database where datname = %s", (DATABASE,)
            ).fetchone()
            if not exists:
                conn.execute(f'create database "{DATABASE}"')
        return True

    wait_until("postgres", ready, record, timeout=60, what="accepting connections")
    return record
