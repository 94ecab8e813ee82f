"""NAME=VALUE parsing."""

from __future__ import annotations

from typing import Any

import pytest

from execorder.cli.values import parse_assignment, parse_assignments, parse_value
from execorder.cli.words import UsageError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True), ("False", False), ("TRUE", True),
        ("none", None), ("null", None), ("None", None),
        ("3", 3), ("-2", -2), ("0.5", 0.5), ("1e3", 1000.0),
        ("[1, 2]", [1, 2]), ('{"a": 1}', {"a": 1}),
        ("(1, 2)", (1, 2)), ("'quoted'", "quoted"), ('"dq"', "dq"),
        ("cls", "cls"), ("mean pooling", "mean pooling"), ("", ""),
        ("a=b", "a=b"),
    ],
)  # fmt: skip
def test_parse_value(text: str, expected: Any) -> None:
    value = parse_value(text)
    assert value == expected
    assert type(value) is type(expected)


def test_assignment_splits_on_first_equals() -> None:
    assert parse_assignment("expr=a=b", option="--concrete") == ("expr", "a=b")


@pytest.mark.parametrize("text", ["noequals", "=3", "1x=3", "a b=1"])
def test_malformed_assignment(text: str) -> None:
    with pytest.raises(UsageError, match="--init expects NAME=VALUE"):
        parse_assignment(text, option="--init")


def test_repeated_name_is_an_error() -> None:
    with pytest.raises(UsageError, match="more than once"):
        parse_assignments(["a=1", "a=2"], option="--concrete")
