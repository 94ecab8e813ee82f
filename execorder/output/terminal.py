"""The terminal renderer: draws a view :class:`~execorder.output.document.Document` with Rich.

It decides nothing about wording; it maps tones and severities to styles and
lays the blocks out. Numbers and shapes are never wrapped or cut; long names
fold onto more lines, so tables stay readable in narrow terminals.
"""

from __future__ import annotations

from io import StringIO

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.measure import Measurement
from rich.table import Table as RichTable
from rich.text import Text
from rich.tree import Tree as RichTree

from execorder.output.document import (
    Block,
    Cell,
    ColumnKind,
    Document,
    Listing,
    Message,
    Severity,
    Table,
    Tone,
    Tree,
)
from execorder.output.encoding import encodable
from execorder.report import Report

STYLES = {
    Tone.PLAIN: "",
    Tone.MUTED: "dim",
    Tone.ACCENT: "cyan",
    Tone.INFO: "blue",
    Tone.OK: "green",
    Tone.WARN: "bold yellow",
    Tone.ERROR: "bold red",
}
SEVERITY_STYLES = {
    Severity.NONE: "",
    Severity.INFO: "",
    Severity.OK: "green",
    Severity.WARNING: "bold yellow",
    Severity.ERROR: "bold red",
}
INDENT = "  "
NAME_WIDTH = 20  # a name column is never narrower than this (or its longest name)


def text(line: Cell, severity: Severity = Severity.NONE) -> Text:
    """A cell as Rich text: its spans styled, indented, the severity's style under them."""
    out = Text(INDENT * line.indent, style=SEVERITY_STYLES[severity])
    for span in line.spans:
        out.append(span.text, STYLES[span.tone])
    return out


def _table(block: Table) -> RenderableType:
    table = RichTable(
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        show_header=block.header,
    )
    for column in block.columns:
        kind = column.kind
        if kind in (ColumnKind.NUMBER, ColumnKind.FIXED):
            index = len(table.columns)
            width = max([len(column.title)] + [len(r.cells[index].text) for r in block.rows])
            table.add_column(
                column.title,
                justify="right" if kind is ColumnKind.NUMBER else "left",
                no_wrap=True,
                min_width=width,
            )
        elif kind is ColumnKind.NAME:
            longest = max(
                [len(column.title)] + [len(r.cells[len(table.columns)].text) for r in block.rows]
            )
            table.add_column(column.title, overflow="fold", min_width=min(longest, NAME_WIDTH))
        else:
            # Text wraps at spaces; a word too long for the column folds onto
            # the next line rather than being cut.
            table.add_column(column.title, overflow="fold")
    for row in block.rows:
        last = len(row.cells) - 1
        cells = [
            text(c, row.severity if i == last else Severity.NONE) for i, c in enumerate(row.cells)
        ]
        table.add_row(*cells)
    # The title is a line of its own, so it never wraps to the table's width.
    title = Text(block.title, style="table.title")
    if not block.left_out:
        return Group(title, _AtLeastMinimum(table))
    notes = [Text(f"… {line}", style="dim") for line in block.left_out]
    return Group(title, _AtLeastMinimum(table), *notes, Text())


class _AtLeastMinimum:
    """A table drawn no narrower than its columns need.

    In a terminal too narrow even for that, its lines wrap in the terminal
    instead of numbers and shapes being cut or names squeezed away.
    """

    def __init__(self, table: RichTable) -> None:
        self.table = table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        needed = Measurement.get(console, options.update(max_width=10_000), self.table).minimum
        width = max(options.max_width, needed)
        yield from console.render(self.table, options.update(width=width, max_width=width))

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement.get(console, options, self.table)


def _tree(block: Tree) -> RenderableType:
    top = RichTree(text(block.root.line), guide_style="dim")
    stack = [(top, block.root)]
    while stack:  # iterative: a tree may be deeper than Python's recursion limit
        drawn, node = stack.pop()
        for child in node.children:
            stack.append((drawn.add(text(child.line)), child))
    notes = [Text(f"… {line}", style="dim") for line in block.left_out]
    return Group(Text(block.title, style="table.title"), top, *notes, Text())


def _listing(block: Listing) -> RenderableType:
    return Group(Text(block.title, style="table.title"), *(text(line) for line in block.lines))


def draw(document: Document) -> RenderableType:
    """The document's blocks, in order, for a Rich console.

    The title is left out: in a terminal the first table (a summary) says
    what the document is about; document formats (Markdown) show it as a heading.
    """
    parts: list[RenderableType] = []
    previous: Block | None = None
    for block in document.blocks:
        # A table ends with a blank line; after anything else, a blank line
        # separates the next block, except that messages stay together.
        after_line = previous is not None and not isinstance(previous, (Table, Tree))
        if after_line and not (isinstance(previous, Message) and isinstance(block, Message)):
            parts.append(Text(""))
        if isinstance(block, Message):
            parts.append(text(block.line, block.severity))
        elif isinstance(block, Tree):
            parts.append(_tree(block))
        else:
            parts.append(_table(block) if isinstance(block, Table) else _listing(block))
        previous = block
    return Group(*parts)


def plain_text(renderable: RenderableType, *, width: int = 100, encoding: str = "utf-8") -> str:
    """What a terminal of ``width`` columns would show, without colour or trailing spaces.

    For an ``encoding`` that cannot write execorder's glyphs (ASCII, a Windows
    code page), the same layout in ASCII stand-ins (:func:`encodable`).
    """
    console = Console(width=width, color_system=None, file=StringIO(), legacy_windows=False)
    console.print(renderable, crop=False)
    lines = console.file.getvalue().splitlines()  # type: ignore[attr-defined]
    return encodable("".join(line.rstrip() + "\n" for line in lines), encoding)


def render_report(
    report: Report, *, depth: int | None = None, max_rows: int | None = None
) -> RenderableType:
    """All of a report's tables, the summary first.

    Args:
        report: The report to show.
        depth: Hide module calls nested deeper than this.
        max_rows: Show at most this many rows per table (None or 0: all).
    """
    from execorder.output.views import report_view  # views import the analyses: when drawn

    return draw(report_view(report, depth=depth, max_rows=max_rows))
