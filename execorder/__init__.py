"""execorder: execution-order profiler for PyTorch models.

Importing the package does not import torch; the API below loads it on first use.

The front door is :func:`profile` (a model, a class, or a ``TARGET`` text; FX
or eager, meta or CPU, decided as the command line decides). The backends are
here too: :func:`trace` (torch.fx only, never runs the model), :mod:`eager`
(``eager.trace`` runs forward for real) and :func:`record` (around a training
step of your own).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "ExecOrderError",
    "ExecOrderTracer",
    "Mode",
    "Profile",
    "Profiler",
    "Report",
    "__version__",
    "diff_reports",
    "eager",
    "explain_indices",
    "fx",
    "load_report",
    "load_target",
    "profile",
    "record",
    "render_report",
    "report_markdown",
    "sweep",
    "trace",
]

if TYPE_CHECKING:
    from execorder.analysis import diff_reports, explain_indices, sweep
    from execorder.backends import eager, fx
    from execorder.backends.compat import ExecOrderTracer
    from execorder.backends.eager import record
    from execorder.backends.fx import trace
    from execorder.errors import ExecOrderError
    from execorder.loading import load_target
    from execorder.output.markdown import report_markdown
    from execorder.output.terminal import render_report
    from execorder.profiling import Profile, Profiler, profile
    from execorder.report import Mode, Report, load_report

_LAZY = {
    "ExecOrderError": "execorder.errors",
    "ExecOrderTracer": "execorder.backends.compat",
    "Mode": "execorder.report",
    "Profile": "execorder.profiling",
    "Profiler": "execorder.profiling",
    "Report": "execorder.report",
    "diff_reports": "execorder.analysis",
    "explain_indices": "execorder.analysis",
    "load_report": "execorder.report",
    "load_target": "execorder.loading",
    "profile": "execorder.profiling",
    "record": "execorder.backends.eager",
    "render_report": "execorder.output.terminal",
    "report_markdown": "execorder.output.markdown",
    "sweep": "execorder.analysis",
    "trace": "execorder.backends.fx",
}
_MODULES = {"eager": "execorder.backends.eager", "fx": "execorder.backends.fx"}


def __getattr__(name: str) -> Any:
    import importlib

    if name in _MODULES:
        return importlib.import_module(_MODULES[name])
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'execorder' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
