"""Test session plumbing: one real local stack per session, on free loopback ports."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tidelog.settings import Settings, load_settings


def make_traversable(path: Path) -> None:
    """Postgres runs as the `postgres` user when we are root: it must reach its directory."""
    for parent in [path, *path.parents]:
        if parent == Path("/"):
            break
        parent.chmod(parent.stat().st_mode | 0o055)


@pytest.fixture(scope="session")
def stack_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    from tidelog import stack

    home = tmp_path_factory.mktemp("tidelog-home")
    make_traversable(home)
    os.environ["TIDELOG_HOME"] = str(home)
    try:
        stack.up(home)
        yield home
    finally:
        stack.down(home)


@pytest.fixture(scope="session")
def settings(stack_home: Path) -> Settings:
    return load_settings(stack_home)
