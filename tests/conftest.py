"""Test session plumbing: one real local stack per session, on free loopback ports."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tidelog.settings import Settings, load_settings


@contextmanager
def stack_dir() -> Iterator[Path]:
    """A home the `postgres` user can reach when we run as root.

    Not under pytest's tmp_path: pytest resets its root to mode 0700 whenever another
    pytest session starts, which would cut a running Postgres off from its data.
    """
    path = Path(tempfile.mkdtemp(prefix="tidelog-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def stack_home() -> Iterator[Path]:
    from tidelog import stack

    with stack_dir() as home:
        os.environ["TIDELOG_HOME"] = str(home)
        try:
            stack.up(home)
            yield home
        finally:
            stack.down(home)


@pytest.fixture(scope="session")
def settings(stack_home: Path) -> Settings:
    return load_settings(stack_home)
