"""The view of a diff of two reports: the verdict, the aligned module order, the changes.

A note's line is written here, once: the view shows it, and the JSON's
``notes`` are these lines, composed when written (``DiffNote.message`` and
``ReportDiff.to_dict`` ask this module).
"""

from __future__ import annotations

from execorder.analysis import (
    CallChange,
    DiffNote,
    DiffNoteKind,
    DiffOp,
    Gap,
    ReportDiff,
)
from execorder.output.document import (
    Block,
    Cell,
    Column,
    Document,
    Listing,
    Message,
    Row,
    Severity,
    Span,
    Table,
    Tone,
    cell,
    code,
    label,
    plural,
)
from execorder.output.views.common import FIXED, NAME
from execorder.spelling import args_text

_COUNT_WORDS = {
    "calls_added": ("call added", "calls added"),
    "calls_removed": ("call removed", "calls removed"),
    "calls_moved": ("call moved", "calls moved"),
    "params_changed": ("param changed", "params changed"),
    "external_added": ("external use added", "external uses added"),
    "external_removed": ("external use removed", "external uses removed"),
}


_OP_SIGNS = {
    DiffOp.SAME: (" ", Tone.MUTED),
    DiffOp.REMOVED: ("-", Tone.ERROR),
    DiffOp.ADDED: ("+", Tone.OK),
}


def diff_line(line: CallChange | Gap) -> Cell:
    """One line of the aligned module-order diff, its sign first."""
    if isinstance(line, Gap):
        return cell(Span(f"  … {plural(line.count, 'unchanged call')}", Tone.MUTED))
    sign, tone = _OP_SIGNS[line.op]
    text = f"{sign} {'  ' * line.depth}{label(line.name)}  [{line.type}]"
    parts = [Span(text, tone)]
    if line.moved:
        parts.append(Span("  (moved)", Tone.ACCENT))
    return Cell(tuple(parts))


def diff_view(diff: ReportDiff) -> Document:
    """Verdict, notes, the aligned module-order diff, then parameter and external changes."""
    blocks: list[Block] = []
    if diff.equivalent:
        verdict = cell("No change: ", code(diff.new_target), " runs as in the baseline.")
        blocks.append(Message(verdict, Severity.OK))
    else:
        counts = diff.counts()
        changed = ", ".join(f"{n:,} {_COUNT_WORDS[key][n != 1]}" for key, n in counts.items() if n)
        blocks.append(Message(cell(f"Changed: {changed}"), Severity.WARNING))
    blocks += [Message(cell(Span(f"note: {note_text(note)}", Tone.MUTED))) for note in diff.notes]
    if diff.calls_changed:
        blocks.append(Listing("Module forward order", tuple(diff_line(c) for c in diff.calls)))
    if diff.params:
        rows = tuple(
            Row((cell(code(p.name)), cell(str(p.what)), cell(p.old or ""), cell(p.new or "")))
            for p in diff.params
        )
        columns = (
            Column("parameter", NAME),
            Column("change", FIXED),
            Column("old", FIXED),
            Column("new", FIXED),
        )
        blocks.append(Table(f"Parameter changes ({len(rows):,})", columns, rows))
    if diff.external_added or diff.external_removed:
        rows = tuple(
            [Row((cell(Span("added", Tone.ERROR)), cell(u))) for u in diff.external_added]
            + [Row((cell(Span("removed", Tone.OK)), cell(u))) for u in diff.external_removed]
        )
        blocks.append(Table("External uses", (Column("", FIXED), Column("use", NAME)), rows))
    title = cell("execorder diff: ", code(diff.new_target))
    return Document(title, tuple(blocks))


def note_text(note: DiffNote) -> str:
    """A note's one line: what differs between the reports, from what to what."""
    kind, old, new = note.kind, note.old, note.new
    if kind is DiffNoteKind.ROOTS:
        return f"the root modules differ ({old} -> {new}): these look like different models"
    if kind is DiffNoteKind.NAMES:
        return (
            f"only {old:,} of {new:,} parameter names are in both reports: these look "
            "like different models"
        )
    if kind is DiffNoteKind.CONCRETE_ARGS:
        old_args, new_args = args_text(old, none="(none)"), args_text(new, none="(none)")
        return f"concrete args differ: {old_args} -> {new_args}"
    if kind is DiffNoteKind.INPUTS:
        sizes = [", ".join(f"{name}={size}" for name, size in side.items()) for side in (old, new)]
        return f"inputs differ: {sizes[0]} -> {sizes[1]}"
    return f"{kind.value} differ: {old} -> {new}"
