"""The view model: what a reader sees of a report, decided once for every renderer.

A :class:`Document` is a title and blocks: tables of rows, one-line messages,
and listings (an aligned diff). Words, counts, number and shape formats, what
is a finding and how much it weighs are settled here; the terminal
(:mod:`execorder.output.terminal`) and Markdown
(:mod:`execorder.output.markdown`) renderers only draw, each in its own
medium: a :class:`Tone` or a :class:`Severity` becomes a colour in one and an
emoji or a code span in the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from execorder.report import Severity, label  # a row's severity marks its last cell

__all__ = ["Severity", "label"]


class Tone(Enum):
    """How a piece of text reads: a renderer gives each tone its own style."""

    PLAIN = "plain"
    MUTED = "muted"  # context: aliases, unchanged lines, what was left out
    ACCENT = "accent"  # a repeat mark: "(call 2)"
    INFO = "info"  # a neutral mark: "frozen"
    OK = "ok"
    WARN = "warn"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Span:
    """A run of text in one tone; ``code`` marks an identifier (a qualified name)."""

    text: str
    tone: Tone = Tone.PLAIN
    code: bool = False


@dataclass(frozen=True, slots=True)
class Cell:
    """A table cell or a line: spans, indented by ``indent`` nesting levels."""

    spans: tuple[Span, ...]
    indent: int = 0

    @property
    def text(self) -> str:
        return "".join(span.text for span in self.spans)


def cell(*parts: str | Span, indent: int = 0) -> Cell:
    """A cell from plain strings and spans; empty strings are dropped."""
    spans = tuple(Span(p) if isinstance(p, str) else p for p in parts if p != "")
    return Cell(spans, indent)


def code(text: str) -> Span:
    """An identifier."""
    return Span(text, code=True)


class ColumnKind(Enum):
    """How a column's cells behave when space is short."""

    NUMBER = "number"  # right-aligned; never wrapped or cut
    FIXED = "fixed"  # shapes, dtypes, short words: never wrapped or cut
    NAME = "name"  # qualified names: folded onto more lines, never cut
    TEXT = "text"  # prose: wrapped at spaces


@dataclass(frozen=True, slots=True)
class Column:
    title: str
    kind: ColumnKind = ColumnKind.TEXT


@dataclass(frozen=True, slots=True)
class Row:
    cells: tuple[Cell, ...]
    severity: Severity = Severity.NONE


class Fold(Enum):
    """Whether a long block may be folded away (Markdown's ``<details>``)."""

    LONG = "long"  # open unless it is long
    ALWAYS = "always"  # reference material: always folded


@dataclass(frozen=True, slots=True)
class Table:
    """Rows under a title.

    Attributes:
        title: What the table is.
        columns: Its columns.
        rows: Its rows.
        left_out: What was left out of it, one line each ("36 more calls").
        header: Whether the column titles are shown.
        fold: Whether a renderer that folds may fold it.
    """

    title: str
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]
    left_out: tuple[str, ...] = ()
    header: bool = True
    fold: Fold = Fold.LONG


@dataclass(frozen=True, slots=True)
class Message:
    """One line on its own: a verdict, a note, an empty table's sentence."""

    line: Cell
    severity: Severity = Severity.NONE


@dataclass(frozen=True, slots=True)
class Listing:
    """Lines that read as a whole (an aligned diff), each a cell with a tone per span.

    ``syntax`` names the listing's language for renderers that highlight it.
    """

    title: str
    lines: tuple[Cell, ...]
    syntax: str = "diff"
    fold: Fold = Fold.LONG


@dataclass(frozen=True, slots=True)
class Node:
    """One line of a tree, and the lines under it."""

    line: Cell
    children: tuple[Node, ...] = ()


@dataclass(frozen=True, slots=True)
class Tree:
    """Nested lines under a title (the module calls): drawn with guides in a terminal.

    Attributes:
        title: What the tree is.
        root: Its top line.
        left_out: What was left out of it, one line each.
    """

    title: str
    root: Node
    left_out: tuple[str, ...] = ()


Block = Table | Message | Listing | Tree


@dataclass(frozen=True, slots=True)
class Document:
    """A titled sequence of blocks: one report, diff, sweep or DDP explanation."""

    title: Cell
    blocks: tuple[Block, ...]


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 call``, ``2 calls``, ``1,024 calls``; ``many`` for an irregular plural."""
    return f"{count:,} {word if count == 1 else many or word + 's'}"
