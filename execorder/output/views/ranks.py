"""The view of a comparison of ranks: whether they agree, and where they part."""

from __future__ import annotations

from collections.abc import Sequence

from execorder.analysis.ranks import RankComparison
from execorder.output.document import (
    Block,
    Column,
    Document,
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
from execorder.output.views.common import FIXED, NAME, NUMBER, TEXT, fact


def _ranks(ranks: Sequence[int]) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(map(str, ranks))


def ranks_view(result: RankComparison) -> Document:
    """Whether the ranks agree; if not, their groups, where they part, and what differs."""
    world = result.world_size
    facts = [fact("target", cell(code(result.target))), fact("world size", f"{world:,}")]
    if result.errors:
        verdict = (
            f"unknown: {plural(sum(len(g.ranks) for g in result.errors), 'rank')} could not record"
        )
        facts.append(fact("ranks", verdict, Severity.ERROR))
    elif result.diverged:
        text = (
            f"diverged: {plural(len(result.groups), 'group')} of ranks ran different forwards; "
            "DDP and FSDP hang, fail or mix up gradients on this"
        )
        facts.append(fact("ranks", text, Severity.ERROR))
    else:
        text = (
            f"agree: all {plural(world, 'rank')} ran the same module calls, in the same order, "
            "and gave each parameter the same status"
        )
        facts.append(fact("ranks", text, Severity.OK))
    facts.append(
        fact("exchanged", f"{result.digest_bytes} bytes a rank; records from one rank a group")
    )
    blocks: list[Block] = [
        Table("Summary", (Column(""), Column("", NAME)), tuple(facts), header=False)
    ]
    if not result.diverged:
        return Document(cell("execorder ranks: ", code(result.target)), tuple(blocks))

    first = result.first_divergence
    rows = []
    for index, group in enumerate(result.groups):
        if group.error is not None:
            there = cell(Span(group.error, Tone.ERROR))
        elif first is None:
            there = cell(Span("(same calls)", Tone.MUTED))
        else:
            name = first.by_group[index]
            there = (
                cell(code(label(name))) if name is not None else cell(Span("(ended)", Tone.WARN))
            )
        rows.append(
            Row((cell(str(index)), cell(_ranks(group.ranks)), cell(f"{group.calls:,}"), there))
        )
    at = f"at call #{first.index:,}" if first is not None else "at the first difference"
    columns = (
        Column("group", NUMBER),
        Column("ranks", TEXT),
        Column("calls", NUMBER),
        Column(at, NAME),
    )
    blocks.append(Table("Groups of ranks that behaved alike", columns, tuple(rows)))
    if first is not None:
        parts: list[str | Span] = [f"First divergence, at module call #{first.index:,}: "]
        for index, name in enumerate(first.by_group):
            ranks = _ranks(result.groups[index].ranks)
            ran = f"ran {name}" if name is not None else "had ended"
            parts.append(("; " if index else "") + f"{ranks} {ran}")
        blocks.append(Message(cell(*parts), Severity.ERROR))
    if result.status_differs:
        by_group: tuple[Column, ...] = (
            Column("parameter", NAME),
            *(Column(f"group {i}", FIXED) for i in range(len(result.groups))),
        )
        status_rows = tuple(
            Row((cell(code(d.param)), *(cell(s or "-") for s in d.by_group)), Severity.NONE)
            for d in result.status_differs
        )
        title = f"Parameters whose status differs across ranks ({len(status_rows):,})"
        blocks.append(Table(title, by_group, status_rows))
    back = result.backward_divergence
    if back is not None:
        parts = [f"Gradient order (DDP's buckets) first differs at position {back.index:,}: "]
        for index, name in enumerate(back.by_group):
            parts.append(
                ("; " if index else "") + f"{_ranks(result.groups[index].ranks)}: {name or 'ended'}"
            )
        blocks.append(Message(cell(*parts), Severity.WARNING))
    return Document(cell("execorder ranks: ", code(result.target)), tuple(blocks))
