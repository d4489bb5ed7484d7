"""The error tree: every class knows its code, HTTP status and whether it is transient."""

from __future__ import annotations

import inspect
import re
import sys
from http import HTTPStatus
from pathlib import Path

import pytest

import api.errors
import tidelog.errors
from api.errors import ApiError, HttpError, status_for
from tidelog.errors import (
    BrokerUnreachable,
    ConnectorError,
    ConnectorNotFound,
    CutError,
    SnapshotError,
    SnapshotNotFound,
    TidelogError,
)
from tidelog.retry import poll

DOCS = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def _tree(root: type[TidelogError]) -> list[type[TidelogError]]:
    found = [root]
    for sub in root.__subclasses__():
        found.extend(_tree(sub))
    return found


# Only the project's own classes: a test module may define its own subclasses.
CLASSES = [c for c in _tree(TidelogError)
           if c.__module__ in ("tidelog.errors", "api.errors")]


def test_the_tree_holds_every_core_class_and_api_error() -> None:
    names = {c.__name__ for c in CLASSES}
    assert set(tidelog.errors.__all__) <= names
    assert {"ApiError", "HttpError"} <= names
    assert ApiError not in vars(tidelog.errors).values()  # HTTP lives in api/


def test_every_class_has_a_unique_code_and_a_valid_status() -> None:
    codes = [c.code for c in CLASSES]
    assert len(codes) == len(set(codes)), sorted(codes)
    for cls in CLASSES:
        assert re.fullmatch(r"[a-z][a-z_]+", cls.code), cls
        assert isinstance(cls.status, int) and 400 <= cls.status <= 599, cls
        HTTPStatus(cls.status)  # a real HTTP status
        assert isinstance(cls.transient, bool), cls


def test_every_class_is_drawn_in_its_module_docstring() -> None:
    for cls in CLASSES:
        doc = inspect.getdoc(sys.modules[cls.__module__]) or ""
        line = next((ln for ln in doc.splitlines()
                     if re.search(rf"[─└├]\s*{cls.__name__}\b|^\s*{cls.__name__}\b", ln)),
                    None)
        assert line is not None, f"{cls.__name__} is not drawn in {cls.__module__}"
        if cls.__module__ == "tidelog.errors":
            # The drawing names the code, the status and the transient mark.
            assert f" {cls.code} " in line and str(cls.status) in line, line
            assert ("transient" in line) == cls.transient, line


@pytest.mark.parametrize("cls", [c for c in CLASSES if c is not HttpError],
                         ids=lambda c: c.__name__)
def test_the_api_maps_each_class_to_its_own_status(cls: type[TidelogError]) -> None:
    # The same message for every class: only the class may decide.
    assert status_for(cls("no snapshot 'x'; cannot connect; unknown run")) == (
        cls.status, cls.code)


def test_http_error_carries_its_own_status() -> None:
    assert status_for(HttpError(409, "snapshot_pinned", "pinned")) == (409, "snapshot_pinned")


def test_every_code_is_documented() -> None:
    text = DOCS.read_text()
    for cls in CLASSES:
        if cls in (ApiError, HttpError, TidelogError):
            continue
        row = next((ln for ln in text.splitlines()
                    if ln.startswith(f"| {cls.status} |")), "")
        assert f"`{cls.code}`" in row, f"{cls.code} is not listed under {cls.status} in {DOCS}"


def test_api_errors_module_has_no_message_rules() -> None:
    source = inspect.getsource(api.errors)
    assert ".message" not in source.split("def status_for", 1)[1].split("\ndef ", 1)[0]


# -- poll ----------------------------------------------------------------------------

def test_poll_retries_transient_errors_until_ready() -> None:
    answers: list[object] = [BrokerUnreachable("down"), None, "ready"]

    def attempt() -> object:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert poll(attempt, timeout=5, interval=0, timed_out=lambda e: CutError("late")) \
        == "ready"
    assert answers == []


def test_poll_stops_at_a_terminal_error() -> None:
    calls = []

    def attempt() -> None:
        calls.append(1)
        raise ConnectorNotFound("no connector named x")

    with pytest.raises(ConnectorNotFound):
        poll(attempt, timeout=5, interval=0, timed_out=lambda e: CutError("late"))
    assert calls == [1]


def test_poll_times_out_naming_the_last_transient_error() -> None:
    def attempt() -> None:
        raise BrokerUnreachable("no broker at 127.0.0.1:1")

    with pytest.raises(SnapshotError) as caught:
        poll(attempt, timeout=0.05, interval=0.01,
             timed_out=lambda e: SnapshotError(f"gave up: {e.message if e else '-'}"))
    assert "127.0.0.1:1" in caught.value.message
    assert isinstance(caught.value.__cause__, BrokerUnreachable)


def test_not_found_subclasses_are_caught_by_their_stage() -> None:
    with pytest.raises(SnapshotError):
        raise SnapshotNotFound("no snapshot 'x'")
    with pytest.raises(ConnectorError):
        raise ConnectorNotFound("no connector named x")
