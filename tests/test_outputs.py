"""Forward's outputs in any container: their tensors are found, so liveness is right."""

from __future__ import annotations

import json
from dataclasses import dataclass

import models
import pytest
import torch
from typer.testing import CliRunner

from execorder import eager
from execorder.backends.common import map_tensors, tensors
from execorder.cli import app


def test_tensors_inside_dataclasses_named_tuples_mappings_and_lists_are_found() -> None:
    model = models.StructuredOutputs()
    outputs = model(torch.randn(2, 4))
    found = list(tensors(outputs))
    assert len(found) == 4 and all(isinstance(t, torch.Tensor) for t in found)


def test_a_cycle_and_a_deep_nesting_are_walked_without_recursion() -> None:
    @dataclass
    class Node:
        value: torch.Tensor
        child: object = None

    root = Node(torch.ones(1))
    node = root
    for _ in range(5000):
        node.child = Node(torch.ones(1))
        node = node.child
    loop: list[object] = [torch.ones(1)]
    loop.append(loop)
    assert len(list(tensors(root))) == 5001
    assert len(list(tensors(loop))) == 1


def test_a_map_over_outputs_reaches_the_tensors_of_dataclasses_and_objects_too() -> None:
    """What readies a compiled job's parameters for DDP goes where the tensors are: before,
    a dataclass was a leaf to it, left unreadied, and the job failed after the recorded step."""

    @dataclass(frozen=True, slots=True)
    class Frozen:
        value: torch.Tensor

    class Holder:
        def __init__(self, value: torch.Tensor) -> None:
            self.value = value

    outputs = models.StructuredOutputs()(torch.randn(2, 4))
    shared = Frozen(torch.ones(1))
    value = {"outputs": outputs, "frozen": [shared, shared], "held": Holder(torch.ones(2))}
    mapped = map_tensors(value, lambda t: t + 1)
    before, after = list(tensors(value)), list(tensors(mapped))
    assert len(after) == len(before) == 6
    assert all(torch.equal(a, b + 1) for a, b in zip(after, before, strict=True))
    assert type(mapped["outputs"]) is models.Outputs and mapped["outputs"].note == "not a tensor"
    assert mapped["frozen"][0] is mapped["frozen"][1]  # one copy of what is shared
    assert isinstance(mapped["held"], Holder)
    assert torch.equal(shared.value, torch.ones(1))  # forward's own objects are not changed


def test_no_used_parameter_is_called_dead_when_forward_returns_a_dataclass() -> None:
    model = models.StructuredOutputs()
    report = eager.trace(model, args=(torch.randn(2, 4),))
    assert report.dead == ()
    with_backward = eager.trace(model, args=(torch.randn(2, 4),), backward=True)
    assert with_backward.dead == ()
    assert set(with_backward.backward or ()) == {n for n, _ in model.named_parameters()}


def test_fail_on_dead_passes_for_it_on_the_command_line() -> None:
    result = CliRunner().invoke(
        app, ["trace", "models:StructuredOutputs", "--input", "x=float32[2,4]",
              "--fail-on", "dead", "-f", "json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["summary"]["params_dead"] == 0


@pytest.mark.transformers
def test_a_transformers_model_output_is_walked() -> None:
    hf = pytest.importorskip("hf", reason="needs transformers (the [hf] extra)")
    model = hf.tiny_llama()
    report = eager.trace(model, kwargs={"input_ids": torch.randint(0, 128, (1, 8))})
    assert report.dead == () and report.summary.params_no_grad == 0
