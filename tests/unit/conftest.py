"""Fixtures shared by unit test modules."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module")
def quiet_mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """For modules that run MLflow on SQLite: no migration chatter, no ./mlruns."""
    logging.disable(logging.WARNING)  # alembic migrations of every fresh SQLite store
    with pytest.MonkeyPatch.context() as patch:
        # MLflow's SQL store creates ./mlruns in the working directory, whatever we ask for.
        patch.chdir(tmp_path_factory.mktemp("cwd"))
        yield
    logging.disable(logging.NOTSET)
