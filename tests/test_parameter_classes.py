"""A user's own parameter classes stay what they are while execorder records."""

from __future__ import annotations

import models
import torch
from torch import nn

from execorder import eager


def _run(record: bool) -> tuple[torch.Tensor, int, object]:
    torch.manual_seed(0)
    model = models.OwnParameterClasses()
    models.CountingParameter.calls = 0
    x = torch.randn(2, 4)
    if not record:
        return model(x), models.CountingParameter.calls, None
    with eager.record(model) as recording:
        out = model(x)
    return out, models.CountingParameter.calls, recording.report()


def test_forward_behaves_exactly_as_without_recording() -> None:
    plain, plain_calls, _ = _run(record=False)
    recorded, recorded_calls, report = _run(record=True)
    assert torch.equal(plain, recorded) and type(recorded) is type(plain)
    assert recorded_calls == plain_calls > 0  # the class's own __torch_function__ still ran
    assert report is not None
    used = {p.name for p in report.params}  # type: ignore[attr-defined]
    # isinstance held, so tagged was used and spare was not.
    assert used == {"tagged", "slotted", "counting", "marked"}
    assert [p.name for p in report.unused] == ["spare"]  # type: ignore[attr-defined]


def test_every_parameter_gets_its_own_class_back() -> None:
    model = models.OwnParameterClasses()
    before = {n: type(p) for n, p in model.named_parameters()}
    eager.trace(model, args=(torch.randn(2, 4),), backward=True)
    assert {n: type(p) for n, p in model.named_parameters()} == before
    assert type(model.marked) is models.Marked and model.marked._is_param  # type: ignore[attr-defined]


def test_a_parameter_that_cannot_be_reclassed_is_still_seen(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Watched by identity through a TorchFunctionMode instead."""
    model = nn.Sequential(nn.Linear(3, 3))
    weight = model[0].weight

    class Stubborn(nn.Parameter):
        def __setattr__(self, name: str, value: object) -> None:
            if name == "__class__":
                raise TypeError("this parameter keeps its class")
            super().__setattr__(name, value)

    model[0].weight = Stubborn(weight.detach())
    report = eager.trace(model, args=(torch.randn(2, 3),))
    assert [p.name for p in report.params] == ["0.weight", "0.bias"]
    assert type(model[0].weight) is Stubborn
