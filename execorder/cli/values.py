"""Parsing of ``NAME=VALUE`` command-line arguments into Python values."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from execorder.cli.words import UsageError

T = TypeVar("T")
_WORDS: dict[str, Any] = {"true": True, "false": False, "none": None, "null": None}


def parse_value(text: str) -> Any:
    """Turn the VALUE of ``NAME=VALUE`` into a Python value.

    ``true``/``false`` and ``none``/``null`` (any case) are booleans and None;
    JSON (numbers, lists, objects, double-quoted strings) and Python literals
    (tuples, single-quoted strings) are parsed as such; anything else is the
    plain string, so ``head=cls`` gives ``"cls"``.

    Args:
        text: The text after the first ``=``.

    Returns:
        The parsed value.
    """
    stripped = text.strip()
    if stripped.lower() in _WORDS:
        return _WORDS[stripped.lower()]
    try:
        return json.loads(stripped)
    except ValueError:
        pass
    except RecursionError:
        raise UsageError(
            "a value nests too deeply to read (more than Python's recursion limit)"
        ) from None
    try:
        return ast.literal_eval(stripped)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def parse_assignment(text: str, *, option: str) -> tuple[str, Any]:
    """Split ``NAME=VALUE`` and parse the value.

    Args:
        text: One occurrence of the option, e.g. ``run_all_layers=true``.
        option: The option's name, used in the error message (``--concrete``).

    Returns:
        The name and the parsed value.

    Raises:
        UsageError: If there is no ``=`` or the name is not an identifier.
    """
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name.isidentifier():
        raise UsageError(f"{option} expects NAME=VALUE with NAME a Python identifier, got {text!r}")
    try:
        return name, parse_value(value)
    except UsageError as exc:
        raise UsageError(f"{option} {name}: {exc}") from None


def parse_assignments(texts: Iterable[str], *, option: str) -> dict[str, Any]:
    """Parse repeated ``NAME=VALUE`` options into a dict; a repeated name is an error."""
    values: dict[str, Any] = {}
    for text in texts:
        name, value = parse_assignment(text, option=option)
        if name in values:
            raise UsageError(f"{option} {name} is given more than once")
        values[name] = value
    return values


def parse_sweep(text: str) -> tuple[str, list[Any]]:
    """Parse ``NAME=V1,V2,...`` (or ``NAME=[json list]``) into a name and its values.

    Each value follows :func:`parse_value`. Values that contain commas
    themselves are given as a JSON list: ``--sweep 'shape=[[1, 2], [3, 4]]'``.

    Raises:
        UsageError: If the name is not an identifier or no value is given.
    """
    name, sep, rest = text.partition("=")
    name = name.strip()
    if not sep or not name.isidentifier():
        raise UsageError(
            f"--sweep expects NAME=V1,V2,... with NAME a Python identifier, got {text!r}"
        )
    stripped = rest.strip()
    values: list[Any] | None = None
    if stripped.startswith("["):
        try:
            parsed = json.loads(stripped)
        except ValueError:
            parsed = None
        values = parsed if isinstance(parsed, list) else None
    if values is None:
        values = [parse_value(part.strip()) for part in rest.split(",") if part.strip()]
    if not values:
        raise UsageError(f"--sweep {name} has no values; give NAME=V1,V2,...")
    return name, values


def parse_choices(
    text: str | None, known: Mapping[str, T], *, option: str, hint: str
) -> tuple[T, ...]:
    """Comma-separated names, each of ``known``, as what they name (in order, each once).

    Raises:
        UsageError: For a name not in ``known``, or none at all; ``hint`` says what to choose.
    """
    if text is None:
        return ()
    chosen = tuple(dict.fromkeys(c.strip() for c in text.split(",") if c.strip()))
    unknown = [c for c in chosen if c not in known]
    if unknown or not chosen:
        raise UsageError(f"{option} got {unknown[0] if unknown else text!r}; {hint}")
    return tuple(known[c] for c in chosen)


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str, *, option: str) -> int:
    """Bytes from ``80GiB``, ``40GB``, ``1.5TiB``, ``512MiB`` or a plain number of bytes.

    Raises:
        UsageError: For anything else.
    """
    found = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", text)
    unit = found.group(2).lower() if found else ""
    value = float(found.group(1)) if found else -1.0
    if found is None or unit not in _UNITS or value <= 0:
        raise UsageError(
            f"{option} expects a size such as 80GiB, 40GB, 512MiB or a number of bytes, "
            f"got {text!r}"
        )
    return int(value * _UNITS[unit])
