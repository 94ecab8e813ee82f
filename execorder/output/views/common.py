"""Pieces every view uses: facts, cells of parameters and calls, cut tables, times."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from execorder.errors import Arg, Words
from execorder.output.document import (
    Cell,
    ColumnKind,
    Row,
    Severity,
    Span,
    Tone,
    cell,
    code,
    label,
    plural,
)
from execorder.report import InputSource, ParamInfo

NUMBER, FIXED, NAME, TEXT = ColumnKind.NUMBER, ColumnKind.FIXED, ColumnKind.NAME, ColumnKind.TEXT


OWN_PARAMS_SHOWN = 6  # local names listed in "own parameters used" before "+N more"


def show_all(words: Words) -> str:
    return f"{words.arg(Arg.MAX_ROWS, value='0')} shows all"


def cut_rows(
    rows: Sequence[Row], max_rows: int | None, what: str, words: Words
) -> tuple[tuple[Row, ...], tuple[str, ...]]:
    """At most ``max_rows`` rows (None or 0: all), and the line saying how many were left out."""
    if not max_rows or len(rows) <= max_rows:
        return tuple(rows), ()
    left_out = plural(len(rows) - max_rows, f"more {what}")
    return tuple(rows[:max_rows]), (f"{left_out} ({show_all(words)})",)


def fact(name: str, value: str | Cell, severity: Severity = Severity.NONE) -> Row:
    return Row((cell(name), value if isinstance(value, Cell) else cell(value)), severity)


def warn_if(count: int) -> Severity:
    return Severity.WARNING if count else Severity.NONE


def param_cell(param: ParamInfo) -> Cell:
    """A parameter's name and its other (tied) names."""
    if param.aliases:
        return cell(code(param.name), Span(" = " + ", ".join(param.aliases), Tone.MUTED))
    return cell(code(param.name))


def status_cell(param: ParamInfo) -> Cell:
    """What is special about a parameter: dead, frozen, assumed, resting on an assumption."""
    return marks(
        (param.dead, "dead", Tone.ERROR),
        (not param.requires_grad, "frozen", Tone.INFO),
        (param.assumed, "assumed", Tone.MUTED),
        (param.rests_on_assumption, "on assumption", Tone.WARN),
    )


def marks(*marks: tuple[bool, str, Tone]) -> Cell:
    """The words whose flag is set, comma-separated, each in its tone."""
    spans: list[str | Span] = []
    for flag, word, tone in marks:
        if flag:
            spans += [", " if spans else "", Span(word, tone)]
    return cell(*spans)


def first_use(param: ParamInfo) -> str:
    """``#N`` when the parameter's own module first used it, else ``#N module``."""
    if param.first_module == param.owner:
        return f"#{param.first_call}"
    return f"#{param.first_call} {label(param.first_module or '')}"


def time_text(us: float) -> str:
    """A duration in microseconds, as reports write it: ``85 µs``, ``1.2 ms``, ``3.40 s``."""
    if us >= 1e6:
        return f"{us / 1e6:.2f} s"
    if us >= 1e3:
        return f"{us / 1e3:.1f} ms"
    return f"{us:.0f} µs"


MADE = {
    InputSource.EXAMPLE: "the model's own example inputs (its dummy_inputs), as it was given none",
    InputSource.TRAINER: "made from the tokens as torchtitan's trainer makes them",
}
"""Where inputs execorder made came from, for a person."""


def made_inputs(made: Mapping[str, InputSource]) -> dict[InputSource, list[str]]:
    """The inputs execorder made, by where they came from."""
    found: dict[InputSource, list[str]] = {}
    for name, source in made.items():
        found.setdefault(source, []).append(name)
    return found
