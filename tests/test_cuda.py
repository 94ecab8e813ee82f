"""Eager mode on a CUDA device (skipped where there is none)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from cases import CASES, Case
from torch import nn

from execorder import eager
from execorder.report import Report

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

KEYS = ("modules", "params", "unused", "dead", "backward")


def _on_cpu_and_cuda(
    case: Case, run: Callable[[nn.Module, tuple[Any, ...], str], Report]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``run(model, args, device)`` on each device, the same seed; the two reports as dicts."""
    reports = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        with torch.device(device):
            model = case.build()
        args = tuple(a.to(device) for a in case.inputs())
        reports[device] = run(model, args, device).to_dict()
    return reports["cpu"], reports["cuda"]


@pytest.mark.parametrize("name", ["seed-all-layers", "transformer", "frozen", "argmax-routing"])
def test_cuda_report_equals_cpu_report(name: str) -> None:
    case = CASES[name]
    cpu, cuda = _on_cpu_and_cuda(
        case,
        lambda model, args, _: eager.trace(
            model, args=args, kwargs=case.concrete_args, backward=True
        ),
    )
    for key in KEYS:
        assert cuda[key] == cpu[key], key


def test_a_step_recorded_on_cuda_under_autocast_equals_cpu() -> None:
    """record() inside the user's own step: autocast, their loss, on the GPU."""

    def step(model: nn.Module, args: tuple[Any, ...], device: str) -> Report:
        with eager.record(model) as recording, torch.autocast(device, dtype=torch.bfloat16):
            model(*args).float().sum().backward()
        return recording.report()

    cpu, cuda = _on_cpu_and_cuda(CASES["llama"], step)
    for key in KEYS:
        assert cuda[key] == cpu[key], key


def test_timing_on_cuda_uses_events_and_nests() -> None:
    case = CASES["transformer"]
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = case.build()
    args = tuple(a.to("cuda") for a in case.inputs())
    report = eager.trace(model, args=args, timing=True)
    assert report.timing is not None and report.timing.clock == "cuda"
    assert len(report.timing.calls) == len(report.modules)
    for call, times in zip(report.modules, report.timing.calls, strict=True):
        assert 0 <= times.self_us <= times.total_us + 1e-3
        if call.parent is not None:
            outer = report.timing.calls[call.parent]
            assert times.start_us >= outer.start_us - 1.0  # event resolution: about 0.5 us


def test_the_device_budget_is_the_gpus_memory() -> None:
    """``memory_budget="device"`` (the command line's default with ``--device cuda``)."""
    import execorder

    case = CASES["transformer"]
    report = execorder.profile(
        case.build,
        inputs=lambda device: tuple(a.to(device) for a in case.inputs()),
        device="cuda",
        memory="sgd",
        memory_budget="device",
    ).report
    total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    assert report.memory is not None and report.memory.budget_bytes == total
