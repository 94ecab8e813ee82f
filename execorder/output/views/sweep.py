"""The view of a sweep: each parameter across the combinations of concrete arguments."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from execorder.analysis import SweepClass, SweepParam, SweepReport
from execorder.output.document import (
    Block,
    Column,
    Document,
    Fold,
    Message,
    Row,
    Severity,
    Table,
    Tone,
    cell,
    code,
    plural,
)
from execorder.output.views.common import FIXED, NAME, NUMBER, TEXT, marks
from execorder.spelling import args_text


def _combinations(indices: Sequence[int]) -> str:
    return ", ".join(f"#{i}" for i in indices) or "none"


def _with_marks(
    title: str, columns: tuple[Column, ...], params: Sequence[SweepParam], cells: Any, **opts: Any
) -> Table:
    """A table of a sweep's parameters, with a status column when one is frozen or assumed."""
    marked = any(not p.requires_grad or p.assumed_in for p in params)
    rows = []
    for p in params:
        mark = marks(
            (not p.requires_grad, "frozen", Tone.INFO),
            (bool(p.assumed_in), "on assumption", Tone.WARN),
        )
        rows.append(Row((*cells(p), mark) if marked else tuple(cells(p))))
    if marked:
        columns = (*columns, Column("status", FIXED))
    return Table(title, columns, tuple(rows), **opts)


def sweep_view(sweep: SweepReport) -> Document:
    """The combinations, then the parameters by where they are used and given gradients.

    Findings come first: branch-dependent parameters (used or given a
    gradient in some combinations only), never used, used but never given a
    gradient; the parameters used and given a gradient everywhere are folded.
    """
    combos = tuple(
        Row(
            (
                cell(str(i)),
                cell(args_text(c.args)),
                cell(f"{c.calls:,}"),
                cell(f"{c.params_used:,}"),
                cell(f"{c.params_no_grad:,}"),
            )
        )
        for i, c in enumerate(sweep.combinations)
    )
    columns: tuple[Column, ...] = (
        Column("#", NUMBER),
        Column("combination", TEXT),
        Column("calls", NUMBER),
        Column("params used", NUMBER),
        Column("no gradient", NUMBER),
    )
    title = f"Sweep of {sweep.target} ({plural(len(combos), 'combination')})"
    blocks: list[Block] = [Table(title, columns, combos)]
    branch = [p for p in sweep.params if p.branch_dependent]
    if branch:
        rows = tuple(
            Row(
                (
                    cell(code(p.name)),
                    cell(_combinations(p.used_in)),
                    cell(_combinations(p.grad_in)),
                )
            )
            for p in branch
        )
        columns = (
            Column("parameter", NAME),
            Column("used in", TEXT),
            Column("gets a gradient in", TEXT),
        )
        title = (
            f"Branch-dependent: used or given a gradient in some combinations only ({len(rows):,})"
        )
        blocks.append(Table(title, columns, rows))
    else:
        line = cell(
            "No branch-dependent parameters: every combination uses the same ones "
            "and gives them the same gradients."
        )
        blocks.append(Message(line, Severity.OK))
    never = sweep.by_status(SweepClass.NEVER)
    if never:
        title = f"Never used ({len(never):,})"
        columns = (Column("parameter", NAME),)
        blocks.append(_with_marks(title, columns, never, lambda p: (cell(code(p.name)),)))
    dead = [n for n in sweep.findings("dead")]
    if dead:
        rows = tuple(Row((cell(code(name)),)) for name in dead)
        title = f"Used, but given no gradient in any combination ({len(rows):,})"
        blocks.append(Table(title, (Column("parameter", NAME),), rows))
    settled = set(dead) | {p.name for p in branch}
    always = [p for p in sweep.by_status(SweepClass.ALWAYS) if p.name not in settled]
    columns = (Column("parameter", NAME), Column("gets a gradient in", TEXT))
    blocks.append(
        _with_marks(
            f"Always used ({len(always):,})",
            columns,
            always,
            lambda p: (cell(code(p.name)), cell(_combinations(p.grad_in))),
            fold=Fold.ALWAYS,
        )
    )
    if sweep.external:
        rows = tuple(Row((cell(use),)) for use in sweep.external)
        title = f"External uses, in some combination ({len(rows):,})"
        blocks.append(Table(title, (Column("use", NAME),), rows))
    return Document(cell("execorder sweep: ", code(sweep.target)), tuple(blocks))
