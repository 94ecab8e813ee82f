"""What a failed gate says: a line a category, the memory's budget, an FSDP2 plan's checks.

The rules are the records' own (``Report.failing``, ``SweepReport.failing``,
``FsdpPlan.failing``, ``Memory.over_budget``); these are their words, which
the command line prints after ``execorder: `` on stderr.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from execorder.analysis.sharding import Check, CheckKind
from execorder.errors import PYTHON, Words
from execorder.report import Category, Report
from execorder.spelling import label, size_text

NAMES_SHOWN = 5  # names a line lists before "… (N more)"


def gate_lines(failing: Mapping[Category, Sequence[str]]) -> list[str]:
    """One line a category a report's or a sweep's gate fails on, naming what it found."""
    lines = []
    for category, found in failing.items():
        shown = ", ".join(found[:NAMES_SHOWN])
        if len(found) > NAMES_SHOWN:
            shown += f", … ({len(found) - NAMES_SHOWN} more)"
        why = {
            Category.ASSUMPTION: (
                " (they rest on an assumption: unused and dead cannot be proven for them)"
            ),
            Category.OUTPUTS: (
                " (only outputs other than the main one reach them: a loss that skips those"
                " leaves them without a gradient)"
            ),
            Category.REENTRANT: (
                " (their gradient arrives in several backward passes, reentrant checkpoints'"
                " own: DDP without static_graph=True fails on them)"
            ),
            Category.RECOMPUTE_ONLY: (
                " (only reentrant checkpoints' recomputes give them a gradient: DDP with"
                " find_unused_parameters=True takes them for unused, then raises)"
            ),
        }.get(category, "")
        lines.append(f"check failed: {category}: {len(found)} ({shown}){why}")
    return lines


def budget_line(report: Report) -> str | None:
    """Why the step's peak exceeds its budget; None when it does not (or was not measured)."""
    memory = report.memory
    if memory is None or not memory.over_budget:
        return None
    at = memory.peak_at
    where = f"{at.phase}" + (
        f", call #{at.call} {label(report.modules[at.call].name)}" if at.call is not None else ""
    )
    largest = ", ".join(f"{kind} {size_text(size)}" for kind, size in memory.largest())
    return (
        f"check failed: memory: the peak, {size_text(memory.peak_bytes)} ({where}), "
        f"exceeds the budget of {size_text(memory.budget_bytes or 0)}; largest: {largest}"
    )


def plan_gate_lines(failing: Sequence[Check], words: Words = PYTHON) -> list[str]:
    """One line a check an FSDP2 plan's gate fails on; the memory's, whole, last."""
    lines = []
    for check in sorted(failing, key=lambda c: c.kind is CheckKind.MEMORY):
        if check.kind is CheckKind.MEMORY:
            lines.append(f"check failed: memory: {check.describe(words)}")
        else:
            units = ", ".join(label(u) for u in check.units)
            lines.append(f"check failed: {check.kind} ({check.severity}): {units}")
    return lines
