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
    PeakChange,
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
from execorder.output.views.common import FIXED, NAME, NUMBER
from execorder.report import DdpBuilt
from execorder.report.memory import Memory, MemoryKind
from execorder.spelling import args_text, ddps_named, size_text

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
        parts = [f"{n:,} {_COUNT_WORDS[key][n != 1]}" for key, n in counts.items() if n]
        if diff.memory is not None:
            old, new = diff.memory.old.peak_bytes, diff.memory.new.peak_bytes
            parts.append(f"peak memory {size_text(old)} -> {size_text(new)}")
        if diff.ddp_changed:
            parts.append("the recorded step's DDP")
        changed = ", ".join(parts)
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
    if diff.memory is not None:
        blocks.append(_peak_table(diff.memory))
    if diff.ddp_changed:
        blocks.append(_ddp_table(diff))
    title = cell("execorder diff: ", code(diff.new_target))
    return Document(title, tuple(blocks))


def _ddp_table(diff: ReportDiff) -> Table:
    """What the recorded step's DDP did, where that changed: whether it finished reducing
    (its own check), and what it registered when built."""
    done, waiting = "finished reducing", "did not finish reducing"
    rows = [
        Row(
            (
                cell(ddps_named([name])),
                cell(Span(done, Tone.MUTED)),
                cell(Span(waiting, Tone.ERROR)),
            )
        )
        for name in diff.ddp_waiting_added
    ] + [
        Row((cell(ddps_named([name])), cell(Span(waiting, Tone.ERROR)), cell(Span(done, Tone.OK))))
        for name in diff.ddp_waiting_removed
    ]
    if diff.ddp_built is not None:
        old, new = (_built(b) for b in diff.ddp_built)
        rows.append(Row((cell("the model"), cell(old), cell(new))))
    columns = (Column("DDP", NAME), Column("old", FIXED), Column("new", FIXED))
    return Table("DDP of the recorded step", columns, tuple(rows))


def _built(built: DdpBuilt | None) -> str:
    if built is None:
        return "built for the parameters that require grad"
    return f"built for {built.params:,} parameters, {built.params_now:,} require grad now"


def _peak_table(change: PeakChange) -> Table:
    """Each step's peak, where it fell, and what was alive then by kind, old beside new."""
    old, new = change.old, change.new

    def where(memory: Memory, call: str | None) -> str:
        at = memory.peak_at
        text = f"step {memory.peak_step}, {at.phase}"
        return text + (f", call #{at.call} {label(call)}" if call is not None else "")

    rows = [
        Row((cell("peak"), cell(size_text(old.peak_bytes)), cell(size_text(new.peak_bytes)))),
        Row((cell("when"), cell(where(old, change.old_call)), cell(where(new, change.new_call)))),
    ]
    for kind in MemoryKind:
        sizes = (old.at_peak.get(kind, 0), new.at_peak.get(kind, 0))
        if any(sizes):
            rows.append(Row((cell(f"{kind} at the peak"), *(cell(size_text(n)) for n in sizes))))
    columns = (Column("", FIXED), Column("old", NUMBER), Column("new", NUMBER))
    return Table("Memory of a training step", columns, tuple(rows))


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
    if kind is DiffNoteKind.MEMORY:
        if old is None or new is None:
            side, setup = ("the new report", new) if old is None else ("the baseline", old)
            return f"memory measured in {side} only ({_setup_text(setup)}): no peaks compared"
        return f"memory measured differently: {_setup_text(old)} -> {_setup_text(new)}"
    return f"{kind.value} differ: {old} -> {new}"


def _setup_text(setup: dict[str, object]) -> str:
    """How a training step was measured, in a few words: its optimizer and sharding."""
    optimizer = setup["optimizer"]
    text = "no optimizer" if optimizer == "none" else str(optimizer)
    if optimizer != "none":
        text += " (foreach)" if setup["foreach"] else " (a parameter at a time)"
    ranks = setup["world_size"]
    return text + (f", one of {ranks} ranks" if ranks != 1 else "")
