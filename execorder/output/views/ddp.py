"""The view of DDP's parameter indices, named, each with execorder's verdict."""

from __future__ import annotations

from execorder.analysis import DdpExplanation
from execorder.output.document import (
    Block,
    Column,
    Document,
    Message,
    Row,
    Severity,
    Table,
    cell,
    code,
)
from execorder.output.views.common import NAME, NUMBER, TEXT, first_use, param_cell
from execorder.report import ParamStatus

_VERDICTS = {
    ParamStatus.DEAD: ("dead (no use reaches an output)", Severity.ERROR),
    ParamStatus.UNUSED: ("unused (never touched)", Severity.ERROR),
    ParamStatus.USED: ("used: expected a gradient", Severity.WARNING),
}


def ddp_view(explanation: DdpExplanation) -> Document:
    """DDP's parameter indices, named, each with execorder's verdict; then whether they agree."""
    rows = []
    for entry in explanation.indices:
        verdict, severity = _VERDICTS[entry.status]
        first = first_use(entry.param) if entry.param.used else ""
        cells = (cell(str(entry.index)), param_cell(entry.param), cell(first), cell(verdict))
        rows.append(Row(cells, severity))
    columns = (
        Column("index", NUMBER),
        Column("parameter", NAME),
        Column("first use", TEXT),
        Column("execorder says", TEXT),
    )
    blocks: list[Block] = [
        Table(f"DDP parameter indices for {explanation.target}", columns, tuple(rows))
    ]
    count = len(explanation.indices)
    if explanation.agrees:
        these = "this parameter" if count == 1 else f"these {count:,} parameters"
        blocks.append(Message(cell(f"execorder predicted exactly {these}."), Severity.OK))
    if explanation.not_named:
        names = ", ".join(p.name for p in explanation.not_named)
        line = cell("execorder also predicts no gradient for: ", code(names))
        blocks.append(Message(line, Severity.WARNING))
    if any(e.status is ParamStatus.USED for e in explanation.indices):
        line = cell(
            "Some named parameters were expected to get a gradient: was the run traced with "
            "the same inputs, concrete arguments and init arguments as the one that failed?"
        )
        blocks.append(Message(line, Severity.WARNING))
    title = cell("DDP parameter indices for ", code(explanation.target))
    return Document(title, tuple(blocks))
