"""Generate docs/cli.md from the argument parser, so the reference cannot drift.

    .venv/bin/python -m tidelog.docgen > docs/cli.md
"""

from __future__ import annotations

import argparse
import os
import sys

from tidelog.cli import _register_extras, build_parser

__all__ = ["cli_reference"]


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


if __name__ == "__main__":
    sys.stdout.write(cli_reference())
