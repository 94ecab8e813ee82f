"""execorder: execution-order profiler for PyTorch models.

Importing the package does not import torch; the API below loads it on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "ExecOrderError",
    "ExecOrderTracer",
    "Report",
    "__version__",
    "load_target",
    "record",
    "trace",
]

if TYPE_CHECKING:
    from execorder.compat import ExecOrderTracer
    from execorder.eager import record
    from execorder.errors import ExecOrderError
    from execorder.fx import trace
    from execorder.loading import load_target
    from execorder.report import Report

_LAZY = {
    "ExecOrderTracer": "execorder.compat",
    "ExecOrderError": "execorder.errors",
    "Report": "execorder.report",
    "load_target": "execorder.loading",
    "record": "execorder.eager",
    "trace": "execorder.fx",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'execorder' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
