"""The Markdown renderer: a view :class:`~execorder.output.document.Document` as GitHub Markdown.

Ready to paste into a pull-request comment: identifiers as code, severities
as emoji, long reference sections folded into ``<details>``, listings in
fenced blocks GitHub colours. It decides nothing about wording.
"""

from __future__ import annotations

from execorder.output.document import (
    Block,
    Cell,
    ColumnKind,
    Document,
    Fold,
    Listing,
    Message,
    Severity,
    Table,
    Tree,
)
from execorder.report import Report

FOLD_AFTER = 20
EMOJI = {
    Severity.NONE: "",
    Severity.INFO: "",
    Severity.OK: "✅ ",
    Severity.WARNING: "⚠️ ",
    Severity.ERROR: "❌ ",
}
"""Each has an ASCII stand-in in :data:`execorder.output.terminal.ASCII`."""
INDENT = "&nbsp;&nbsp;"


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def inline(line: Cell, severity: Severity = Severity.NONE) -> str:
    """A cell as inline Markdown: identifiers in backticks, the severity as an emoji."""
    parts = [EMOJI[severity], INDENT * line.indent]
    for span in line.spans:
        text = _escape(span.text)
        parts.append(f"`{text}`" if span.code and text else text)
    return "".join(parts)


def _section(title: str, body: str, *, rows: int, fold: Fold) -> str:
    """A titled block, folded into <details> when it is reference material or long."""
    if fold is Fold.ALWAYS or rows > FOLD_AFTER:
        return f"<details>\n<summary>{title}</summary>\n\n{body}\n\n</details>"
    return f"**{title}**\n\n{body}"


def _table(block: Table) -> str:
    align = ["--:" if c.kind is ColumnKind.NUMBER else "---" for c in block.columns]
    titles = [c.title if block.header else "" for c in block.columns]
    lines = ["| " + " | ".join(titles) + " |", "| " + " | ".join(align) + " |"]
    for row in block.rows:
        last = len(row.cells) - 1
        cells = [
            inline(c, row.severity if i == last else Severity.NONE) for i, c in enumerate(row.cells)
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [f"\n_… {line}_" for line in block.left_out]
    return _section(block.title, "\n".join(lines), rows=len(block.rows), fold=block.fold)


def _listing(block: Listing) -> str:
    body = "\n".join(line.text for line in block.lines)
    fenced = f"```{block.syntax}\n{body}\n```"
    return _section(block.title, fenced, rows=len(block.lines), fold=block.fold)


def _tree(block: Tree) -> str:
    lines = []
    stack = [(block.root, 0)]
    while stack:
        node, depth = stack.pop()
        lines.append("  " * depth + node.line.text)
        stack.extend((child, depth + 1) for child in reversed(node.children))
    body = "```text\n" + "\n".join(lines) + "\n```"
    body += "".join(f"\n\n_… {line}_" for line in block.left_out)
    return _section(block.title, body, rows=len(lines), fold=Fold.LONG)


def _block(block: Block) -> str:
    if isinstance(block, Message):
        return inline(block.line, block.severity)
    if isinstance(block, Tree):
        return _tree(block)
    return _table(block) if isinstance(block, Table) else _listing(block)


def draw(document: Document) -> str:
    """The document as Markdown: its title as a heading, then each block."""
    parts = [f"### {inline(document.title)}", *(_block(b) for b in document.blocks)]
    return "\n\n".join(parts) + "\n"


def report_markdown(report: Report) -> str:
    """A trace report: summary, findings open, orders folded."""
    from execorder.output.views import report_view  # views import the analyses: when drawn

    return draw(report_view(report))
