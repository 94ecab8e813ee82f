"""The call tree: the module calls nested, repeated blocks folded, marks on their lines."""

from __future__ import annotations

from execorder.analysis.sharding import FsdpPlan
from execorder.errors import PYTHON, Arg, Words
from execorder.output.document import (
    Block,
    Cell,
    Document,
    Message,
    Node,
    Severity,
    Span,
    Tone,
    Tree,
    cell,
    code,
    label,
    plural,
)
from execorder.output.views.common import show_all, time_text
from execorder.report import Report, size_text
from execorder.report.folding import fold_calls, own_uses
from execorder.report.memory import Phase


def tree_view(
    report: Report,
    *,
    depth: int | None = None,
    max_rows: int | None = None,
    plan: FsdpPlan | None = None,
    words: Words = PYTHON,
) -> Document:
    """The module calls as a tree: nesting, own parameters used, marks; repeated blocks folded.

    Runs of sibling calls with identical subtrees (``layers.0`` to
    ``layers.79``, the same calls and uses inside) fold into one line, with
    the first one's subtree under it (:func:`~execorder.report.folding.fold_calls`).
    Dead parameters are marked where they are used, unused ones on their
    module's first call, FSDP units (with a ``plan``) on their calls, the
    bytes alive as each call starts (with a measured step: ``memory``), and
    times (with ``timing``) on every call.
    """
    calls = report.modules
    unused: dict[str, list[str]] = {}
    for param in report.unused:
        owner, _, local = param.name.rpartition(".")
        unused.setdefault(owner, []).append(local)
    units = (
        {m: (i, u) for i, u in enumerate(plan.units) for m in u.modules} if plan is not None else {}
    )
    timing = report.timing
    owns = own_uses(report)
    alive: dict[int, int] = {}  # bytes alive as each call starts, with a measured step
    if report.memory is not None:
        for point in report.memory.timeline:
            if point.phase is Phase.FORWARD and point.call is not None:
                alive.setdefault(point.call, point.bytes)
    peak = report.memory.peak_at if report.memory is not None else None

    def line(index: int, name: str, count: int) -> Cell:
        call = calls[index]
        parts: list[str | Span] = [code(label(name)), Span(f"  {call.type}", Tone.MUTED)]
        if count > 1:
            parts.append(Span(f" ×{count}, same calls", Tone.ACCENT))
        elif call.repeat:
            parts.append(Span(f"  (call {call.repeat + 1})", Tone.ACCENT))
        if call.name in units and call.repeat == 0:
            number, unit = units[call.name]
            group = f" ({label(unit.name)})" if unit.grouped else ""
            gathers = f"gathers {size_text(unit.gather_bytes)}"
            parts.append(Span(f"  [unit {number}{group}, {gathers}]", Tone.INFO))
        used = owns[index]
        if used:
            parts.append("  ")
            for i, (local, is_dead) in enumerate(used):
                parts.append(", " if i else "")
                parts.append(Span(f"{local} (dead)", Tone.WARN) if is_dead else local)
        if call.repeat == 0 and count == 1 and unused.get(call.name):
            parts.append(Span(f"  unused: {', '.join(unused[call.name])}", Tone.WARN))
        if index in alive and count == 1:
            at_peak = peak is not None and peak.call == index
            memory = f"  {size_text(alive[index])} alive"
            if peak is not None and at_peak:
                memory += f" (the step's peak falls in its {peak.phase})"
            parts.append(Span(memory, Tone.WARN if at_peak else Tone.MUTED))
        if timing is not None and count == 1:
            times = timing.calls[index]
            parts.append(
                Span(
                    f"  {time_text(times.total_us)} (self {time_text(times.self_us)})",
                    Tone.MUTED,
                )
            )
        return cell(*parts)

    folded = fold_calls(report, depth=depth, max_rows=max_rows, marked=units)
    # Nodes bottom-up (no recursion: trees can be deep).
    items = folded.lines
    below: list[list[Node]] = [[] for _ in items]
    nodes: list[Node | None] = [None] * len(items)
    for position in range(len(items) - 1, -1, -1):
        item = items[position]
        nodes[position] = Node(
            line(item.call, item.name, item.count), tuple(reversed(below[position]))
        )
        if item.parent is not None:
            below[item.parent].append(nodes[position])  # type: ignore[arg-type]
    left_out = []
    if folded.hidden:
        deeper = words.arg(Arg.DEPTH, value=str(depth))
        left_out.append(f"{plural(folded.hidden, 'call')} nested deeper than {deeper} not shown")
    if folded.cut:
        left_out.append(f"{plural(folded.cut, 'more line')} ({show_all(words)})")
    title = f"Module calls ({len(calls):,}), as a tree"
    blocks: list[Block] = [Tree(title, nodes[0], tuple(left_out))]  # type: ignore[arg-type]
    called = {c.name for c in calls}
    elsewhere = [p.name for p in report.unused if p.name.rpartition(".")[0] not in called]
    if elsewhere:
        shown = ", ".join(elsewhere[:5]) + (
            f" and {len(elsewhere) - 5} more" if len(elsewhere) > 5 else ""
        )
        blocks.append(
            Message(cell("Unused, in modules never called: ", code(shown)), Severity.WARNING)
        )
    return Document(cell("execorder tree: ", code(report.target)), tuple(blocks))
