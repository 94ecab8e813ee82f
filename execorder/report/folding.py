"""The call tree of a report, folded: runs of sibling calls with identical subtrees as one.

``layers.0`` to ``layers.79`` (the same calls, the same uses inside) become
one line standing for 80 calls, with the first one's subtree under it. Data
work on a finished report, no words: the tree view
(:mod:`execorder.output.views.tree`) draws the lines this gives.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from execorder.report.records import Report

_INDEXED = re.compile(r"^(.*?)(\d+)$")


@dataclass(frozen=True, slots=True)
class FoldedLine:
    """One line of a folded call tree.

    Attributes:
        call: The index of the (first) call it stands for.
        name: That call's qualified name, or a run's (``layers.0-79``).
        count: How many sibling calls it stands for (1 unless folded).
        depth: How deep it is nested (the root is 0).
        parent: The position of its parent's line; None for the root.
    """

    call: int
    name: str
    count: int
    depth: int
    parent: int | None


@dataclass(frozen=True, slots=True)
class FoldedTree:
    """A folded call tree, its lines in pre-order.

    Attributes:
        lines: The lines, the root first.
        hidden: Calls left out for being nested deeper than asked.
        cut: Lines left out beyond the most asked for.
    """

    lines: tuple[FoldedLine, ...]
    hidden: int = 0
    cut: int = 0


def relative(name: str, parent: str) -> str:
    """A qualified name below ``parent``, without it: ``layers.0.attn`` under ``layers.0``."""
    return name[len(parent) + 1 :] if parent and name.startswith(parent + ".") else name


def own_uses(report: Report) -> list[tuple[tuple[str, bool], ...]]:
    """Each call's own uses: the parameters' names relative to its module, and whether dead."""
    dead = {p.name for p in report.dead}
    return [
        tuple(
            dict.fromkeys(
                (relative(p, call.name), p in dead)
                for group in call.uses
                if group.module == call.name
                for p in group.params
            )
        )
        for call in report.modules
    ]


def fold_calls(
    report: Report,
    *,
    depth: int | None = None,
    max_rows: int | None = None,
    marked: Collection[str] = (),
) -> FoldedTree:
    """The report's call tree, with runs of sibling calls that have identical subtrees folded.

    Siblings fold when their names are ``prefix.N`` with consecutive N and
    their subtrees are alike: the same classes, the same own uses (dead or
    not), the same ``marked`` modules (an FSDP plan's units), all the way down.

    Args:
        report: The report.
        depth: Leave out calls nested deeper than this.
        max_rows: At most this many lines (None or 0: all).
        marked: Qualified names whose calls must not fold with unmarked ones.
    """
    calls = report.modules
    kids: list[list[int]] = [[] for _ in calls]
    for call in calls:
        if call.parent is not None:
            kids[call.parent].append(call.index)
    owns = own_uses(report)

    # Each call's subtree, as a comparable key, children before parents.
    keys: list[object] = [None] * len(calls)
    for index in range(len(calls) - 1, -1, -1):
        call = calls[index]
        keys[index] = (
            call.type,
            owns[index],
            call.name in marked,
            tuple((relative(calls[k].name, call.name), keys[k]) for k in kids[index]),
        )

    # Pre-order, with folding (no recursion: trees can be deep).
    lines: list[FoldedLine] = []
    hidden = cut = 0
    stack = [FoldedLine(0, calls[0].name, 1, 0, None)]
    while stack:
        line = stack.pop()
        if max_rows and len(lines) >= max_rows:
            cut += 1
            continue
        lines.append(line)
        me = len(lines) - 1
        children = kids[line.call]
        if depth is not None and line.depth >= depth:
            hidden += len(children)
            continue
        names = [calls[k].name for k in children]
        folded = []
        for start, end in _runs(names, [keys[k] for k in children]):
            shown = names[start] if end - start == 1 else _span_name(names[start], names[end - 1])
            folded.append(FoldedLine(children[start], shown, end - start, line.depth + 1, me))
        stack.extend(reversed(folded))
    return FoldedTree(tuple(lines), hidden=hidden, cut=cut)


def _runs(names: Sequence[str], keys: Sequence[object]) -> list[tuple[int, int]]:
    """Runs of siblings to fold: equal keys, names ``prefix.N`` with consecutive N."""
    runs, start = [], 0
    while start < len(names):
        end = start + 1
        first = _INDEXED.match(names[start])
        while first and end < len(names) and keys[end] == keys[start]:
            match = _INDEXED.match(names[end])
            if not match or match[1] != first[1] or int(match[2]) != int(first[2]) + end - start:
                break
            end += 1
        runs.append((start, end))
        start = end
    return runs


def _span_name(first: str, last: str) -> str:
    """``layers.0`` and ``layers.79`` as ``layers.0-79``."""
    return f"{first}-{_INDEXED.match(last)[2]}"  # type: ignore[index]
