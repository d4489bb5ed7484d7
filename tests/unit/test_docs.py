"""Documentation that cannot drift: the CLI reference, the README's commands, settings."""

from __future__ import annotations

import re
from pathlib import Path

from tidelog.docgen import cli_reference
from tidelog.settings import ENV_FIELDS

ROOT = Path(__file__).resolve().parents[2]


def test_cli_reference_is_up_to_date() -> None:
    committed = (ROOT / "docs" / "cli.md").read_text()
    assert committed == cli_reference(), (
        "docs/cli.md is stale: run `.venv/bin/python -m tidelog.docgen > docs/cli.md`")


def test_readme_names_every_command_and_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = set(re.findall(r"^### `tidelog (\w+)", cli_reference(), re.M))
    assert commands, "no commands found in the reference"
    missing = [c for c in sorted(commands) if f"tidelog {c}" not in readme]
    assert not missing, f"README does not mention: {missing}"
    for env in ENV_FIELDS:
        assert env in readme, f"README does not document {env}"
    assert "make demo" in readme and "make test" in readme


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "set -euo pipefail" in ci
