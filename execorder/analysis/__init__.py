"""Analyses of finished reports: diffs, sweeps, DDP's indices. No torch needed."""

from execorder.analysis.ddp import DdpExplanation, IndexExplanation, explain_indices, parse_indices
from execorder.analysis.diff import (
    CallChange,
    ChangeKind,
    DiffNote,
    DiffNoteKind,
    DiffOp,
    Gap,
    ParamChange,
    PeakChange,
    ReportDiff,
    diff_reports,
)
from execorder.analysis.sweep import Combination, SweepClass, SweepParam, SweepReport, sweep

__all__ = [
    "CallChange",
    "ChangeKind",
    "Combination",
    "DdpExplanation",
    "DiffNote",
    "DiffNoteKind",
    "DiffOp",
    "Gap",
    "IndexExplanation",
    "ParamChange",
    "PeakChange",
    "ReportDiff",
    "SweepClass",
    "SweepParam",
    "SweepReport",
    "diff_reports",
    "explain_indices",
    "parse_indices",
    "sweep",
]
