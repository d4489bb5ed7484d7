"""Generate the references that cannot drift: the CLI from the argument parser, the
settings from their typed sections.

    .venv/bin/python -m tidelog.docgen > docs/cli.md
    .venv/bin/python -m tidelog.docgen configuration > docs/configuration.md
"""

from __future__ import annotations

import argparse
import os
import sys

from pydantic_settings import BaseSettings

from api.config import ApiEnv
from tidelog.cli import _register_extras, build_parser
from tidelog.settings import KAFKA_PASSTHROUGH, CoreEnv, ProcessEnv, StackEnv, section_variables

__all__ = ["cli_reference", "configuration_reference", "SECTIONS"]

# Every setting tidelog reads, by section: (title, what it configures, model).
SECTIONS: tuple[tuple[str, str, type[BaseSettings]], ...] = (
    ("Connections and storage", "Every command. Environment first, then the config file "
     "(`$TIDELOG_CONFIG`, else `$TIDELOG_HOME/config.toml`, the same names in lower case), "
     "then the running local stack (`$TIDELOG_HOME/stack.json`).", CoreEnv),
    ("Process", "Where tidelog keeps its state; the crash hook of the crash tests.", ProcessEnv),
    ("Local stack", "What `tidelog stack up` starts.", StackEnv),
    ("API server", "The `tidelog api serve` process (and the compose service).", ApiEnv),
)


def _subparsers(parser: argparse.ArgumentParser
                ) -> dict[str, tuple[argparse.ArgumentParser, str]]:
    for action in parser._actions:  # argparse keeps no public accessor for these
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            return {n: (p, helps.get(n, "")) for n, p in action.choices.items()}
    return {}


def _walk(parser: argparse.ArgumentParser, words: list[str], out: list[str],
          summary: str = "") -> None:
    children = _subparsers(parser)
    if not children:
        out.append(f"### `{' '.join(words)}`\n")
        if summary:
            out.append(summary[0].upper() + summary[1:] + ".\n")
        out.append("```text")
        out.append(parser.format_help().rstrip())
        out.append("```\n")
        return
    for name, (child, text) in children.items():
        _walk(child, [*words, name], out, text)


def cli_reference() -> str:
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal: pin it
    _register_extras()
    parser = build_parser()
    parser.prog = "tidelog"
    out = ["# tidelog command reference", "",
           "Generated from the code by `python -m tidelog.docgen`; "
           "`tests/unit/test_docs.py` fails when it is out of date.", ""]
    _walk(parser, ["tidelog"], out)
    return "\n".join(out).rstrip() + "\n"


def _default(value: object) -> str:
    if value is None or value == "":
        return "unset"
    if isinstance(value, bool):
        return "`on`" if value else "`off`"
    return f"`{value}`"


def configuration_reference() -> str:
    out = ["# tidelog configuration reference", "",
           "Generated from the typed settings (`tidelog/settings.py`, `api/config.py`) by "
           "`python -m tidelog.docgen configuration`; `tests/unit/test_docs.py` fails when it "
           "is out of date. A value that does not parse (a number, an on/off switch) is "
           "refused with the variable's name; nothing falls back silently.", ""]
    for title, text, section in SECTIONS:
        out += [f"## {title}", "", text, "", "| variable | default | meaning |",
                "|---|---|---|"]
        for env, _name, default, description in section_variables(section):
            out.append(f"| `{env}` | {_default(default)} | {description} |")
        out.append("")
    out += ["## Kafka client pass-through", "",
            f"`{KAFKA_PASSTHROUGH}<NAME>` variables (`__` stands for `.`), and the `[kafka]` "
            "table of the config file, pass straight to confluent-kafka, e.g. "
            f"`{KAFKA_PASSTHROUGH}SECURITY__PROTOCOL=SASL_SSL` sets `security.protocol`.", ""]
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    if sys.argv[1:] == ["configuration"]:
        sys.stdout.write(configuration_reference())
    else:
        sys.stdout.write(cli_reference())
