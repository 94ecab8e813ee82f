"""Reports of steps that ran compiled code, compared with the plain model's.

Compiled code runs eagerly to be recorded, and a dead parameter of it rests
on eager's graph for it (the compiled graph may hold it as an input); the
rest of the report is the plain model's. Used by tests/test_record_wrapped.py
and tests/job_probe.py.
"""

from __future__ import annotations

from typing import Any

COMPILED = "eager's graph for compiled code"


def as_eager(report: dict[str, Any]) -> dict[str, Any]:
    """A report of a step that ran compiled code (eagerly), as if none had run: nothing rests
    on eager's graph for it (tests/test_record_wrapped.py checks what does)."""
    if not any(a["assumed"] == COMPILED for a in report["assumptions"]):
        return report

    def eager(params: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**p, "rests_on_assumption": False} if p.get("dead") else p for p in params]

    params = eager(report["params"])
    summary = {
        **report["summary"],
        "params_on_assumption": sum(p["rests_on_assumption"] for p in params),
    }
    return {
        **report,
        "params": params,
        "dead": eager(report["dead"]),
        "assumptions": [a for a in report["assumptions"] if a["assumed"] != COMPILED],
        "summary": summary,
    }
