"""Eager mode on a CUDA device (skipped where there is none)."""

from __future__ import annotations

import pytest
import torch
from cases import CASES

from execorder import eager

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("name", ["seed-all-layers", "transformer", "frozen", "argmax-routing"])
def test_cuda_report_equals_cpu_report(name: str) -> None:
    case = CASES[name]
    reports = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        with torch.device(device):
            model = case.build()
        args = tuple(a.to(device) for a in case.inputs())
        reports[device] = eager.trace(model, args=args, kwargs=case.concrete_args, backward=True)
    cpu, cuda = (reports[d].to_dict() for d in ("cpu", "cuda"))
    for key in ("modules", "params", "unused", "dead", "backward"):
        assert cuda[key] == cpu[key], key


def test_a_step_recorded_on_cuda_under_autocast_equals_cpu() -> None:
    """record() inside the user's own step: autocast, their loss, on the GPU."""
    case = CASES["llama"]
    reports = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        with torch.device(device):
            model = case.build()
        args = tuple(a.to(device) for a in case.inputs())
        with eager.record(model) as recording, torch.autocast(device, dtype=torch.bfloat16):
            model(*args).float().sum().backward()
        reports[device] = recording.report().to_dict()
    cpu, cuda = reports["cpu"], reports["cuda"]
    for key in ("modules", "params", "unused", "dead", "backward"):
        assert cuda[key] == cpu[key], key
