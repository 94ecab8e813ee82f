"""Views of reports, plans and comparisons: the one place wording lives.

A view turns a document (a report, a diff, a sweep, DDP's indices, an FSDP2
plan, a comparison of ranks) into a :class:`~execorder.output.document.Document`:
one module a document, each deciding its words, counts and verdicts once.
``words`` names the caller's arguments where a view says what to pass
(Python's keywords by default; the command line passes its flags).
"""

from execorder.output.views.ddp import ddp_view
from execorder.output.views.diff import diff_line, diff_view
from execorder.output.views.fsdp import fsdp_view, plan_dtypes
from execorder.output.views.gates import budget_line, gate_lines, plan_gate_lines
from execorder.output.views.ranks import ranks_view
from execorder.output.views.report import assumptions_fact, ddp_verdict, report_view, slowest
from execorder.output.views.sweep import sweep_view
from execorder.output.views.tree import tree_view

__all__ = [
    "assumptions_fact",
    "budget_line",
    "ddp_verdict",
    "ddp_view",
    "diff_line",
    "diff_view",
    "fsdp_view",
    "gate_lines",
    "plan_dtypes",
    "plan_gate_lines",
    "ranks_view",
    "report_view",
    "slowest",
    "sweep_view",
    "tree_view",
]
