"""Documentation that cannot drift: the CLI reference, the README's commands, settings."""

from __future__ import annotations

import re
from pathlib import Path

from tidelog.crashpoints import CRASH_ENV
from tidelog.docgen import SECTIONS, cli_reference, configuration_reference
from tidelog.settings import KAFKA_PASSTHROUGH, CoreEnv, ProcessEnv, env_name, section_variables

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
    for env, *_ in section_variables(CoreEnv):
        assert env in readme, f"README does not document {env}"
    assert "docs/configuration.md" in readme
    assert "make demo" in readme and "make test" in readme


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "set -euo pipefail" in ci


def test_the_configuration_reference_is_current_and_complete() -> None:
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == configuration_reference(), (
        "docs/configuration.md is stale: run "
        "`.venv/bin/python -m tidelog.docgen configuration > docs/configuration.md`")
    documented = {env for _t, _x, section in SECTIONS for env, *_ in section_variables(section)}
    for _title, _text, section in SECTIONS:
        for env, name, _default, description in section_variables(section):
            assert description, f"{env} ({section.__name__}.{name}) has no description"
            assert f"| `{env}` |" in committed
    # Every TIDELOG_ variable the code names is a field of a section (or the pass-through).
    named: set[str] = set()
    for path in ROOT.glob("[a-z]*/**/*.py"):
        if path.parts[len(ROOT.parts)] in {"tests", "benchmarks"} or ".venv" in path.parts:
            continue
        named |= set(re.findall(r"\bTIDELOG_[A-Z][A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
    unknown = sorted(v for v in named - documented if not v.startswith(KAFKA_PASSTHROUGH))
    assert not unknown, f"variables read outside the typed settings: {unknown}"
    assert CRASH_ENV == env_name(ProcessEnv, "crash_at")
