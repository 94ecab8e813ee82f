"""Reading a parameter's metadata (.dtype, .shape, .size()) is not a use, in FX and eager alike."""

from __future__ import annotations

import models
import pytest
import torch
from cases import CASES

import execorder
from execorder import eager
from execorder.backends.common import METADATA_ATTRS, METADATA_METHODS, metadata_functions


def _both(model: torch.nn.Module, *args: torch.Tensor) -> list[execorder.Report]:
    return [execorder.trace(model), eager.trace(model, args=args)]


def test_a_lora_layer_has_no_external_uses() -> None:
    for report in _both(models.LoraLinear(), torch.randn(2, 4)):
        assert report.external == (), report.mode
        assert report.findings("external") == ()
        first = {p.name: p.first_module for p in report.params}
        assert first["lora_A.weight"] == "lora_A"  # first used when lora_A runs


def test_a_parameter_read_only_for_its_shape_is_unused_in_both_modes() -> None:
    for report in _both(models.ShapeOnly(), torch.randn(3, 16)):
        assert [p.name for p in report.unused] == ["w"], report.mode


@pytest.mark.parametrize("read", [*sorted(METADATA_ATTRS - {"is_quantized"}), "size", "dim"])
def test_each_metadata_read_alone_leaves_the_parameter_unused(read: str) -> None:
    class Reads(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(2, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            value = getattr(self.w, read)
            _ = value() if callable(value) else value
            return x * 2

    report = eager.trace(Reads(), args=(torch.ones(2),))
    assert [p.name for p in report.unused] == ["w"]


def test_every_metadata_name_is_a_tensor_attribute() -> None:
    for name in METADATA_ATTRS | METADATA_METHODS:
        assert hasattr(torch.Tensor, name), name
    assert len(metadata_functions()) == len(METADATA_ATTRS | METADATA_METHODS)


def test_the_drop_in_tracer_keeps_pytorchs_semantics() -> None:
    """PyTorch's _ExecOrderTracer counts w.shape as a use of w; so does the drop-in."""
    model = models.ShapeOnly()
    tracer = torch.fx.Tracer()
    eo = execorder.ExecOrderTracer()
    with eo.patch_tracer(tracer=tracer, root_module=model):
        tracer.trace(model)
    assert model.w in eo.exec_info.visited_params


def test_the_ground_truth_still_holds_for_shape_reads() -> None:
    from cases import backward_no_grad, predict

    case = CASES["shape-only"]
    assert {p.name for p in predict(case).no_grad()} == set(backward_no_grad(case))
