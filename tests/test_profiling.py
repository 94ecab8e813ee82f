"""execorder.profile: the command line's policy, for Python users, with notes as data."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import models
import pytest
import torch
from moe import MoE
from seed import Model

import execorder
from execorder.errors import (
    InstanceDeviceError,
    MetaDeviceError,
    ModeError,
    NeedsInputsError,
)
from execorder.loading import InputSpec
from execorder.profiling import NoteKind, Profiler
from execorder.report import AssumptionKind

SEED = str(Path(__file__).resolve().parent.parent / "sample_models" / "seed.py") + ":Model"


def test_a_class_is_built_on_meta_and_traced_with_fx() -> None:
    result = execorder.profile(Model, concrete_args={"run_all_layers": True})
    assert result.device == "meta" and result.notes == ()
    assert result.report.mode == "fx" and result.report.target == "Model"
    expected = execorder.trace(Model(), concrete_args={"run_all_layers": True}, target="Model")
    assert result.report.seed == 0 and expected.seed is None  # profile() seeds; trace() has no say
    assert dataclasses.replace(result.report, seed=None) == expected


def test_a_target_text_works_as_on_the_command_line() -> None:
    result = execorder.profile(SEED, concrete_args={"run_all_layers": False})
    assert result.report.target == SEED
    assert [p.name for p in result.report.unused] == ["weight2", "weight_unused", "layer1.weight"]


def test_a_module_is_used_where_it_is() -> None:
    model = Model()
    result = execorder.profile(model, concrete_args={"run_all_layers": True})
    assert result.device == "cpu" and result.report.target == "Model"
    assert all(not p.is_meta for p in model.parameters())


def test_auto_runs_forward_on_the_inputs_given() -> None:
    result = execorder.profile(models.Branchy, input_size=(2, 4))
    assert result.report.mode == "eager" and result.notes == ()
    assert [p.name for p in result.report.params] == ["lin.weight", "lin.bias"]  # flag=True
    distill = execorder.profile(models.Distill, input_size=(2, 16)).report
    assert distill.mode == "eager"
    assert [p.name for p in distill.dead] == ["teacher.weight", "teacher.bias"]


def test_auto_without_inputs_says_how_to_run_eagerly_in_python() -> None:
    with pytest.raises(NeedsInputsError) as raised:
        execorder.profile(Model)
    text = str(raised.value)
    assert "pin it with concrete_args={'run_all_layers': ...}" in text
    assert "Or run forward for real: mode='eager', input_size" in text
    assert "--" not in text


def test_forward_that_reads_its_inputs_stays_on_meta() -> None:
    result = execorder.profile(models.DataDependent, input_size="float32[2,4]")
    assert result.notes == () and result.device == "meta"
    on_cpu = execorder.profile(models.DataDependent, input_size="float32[2,4]", device="cpu")
    assert result.report.to_dict() == on_cpu.report.to_dict()  # the same seeded input, branch


def test_forward_that_needs_values_of_parameters_is_rerun_on_cpu_with_notes() -> None:
    result = execorder.profile(models.ParamDependent, input_size="float32[2,4]")
    (note,) = result.notes
    assert note.kind is NoteKind.RERAN_ON_CPU
    assert result.device == "cpu" and result.report.mode == "eager"
    # The whole reason, not a prefix of it, with where the model read the value.
    assert note.reason.startswith("reading a value computed from parameters (.item(), if tensor:")
    lines, first = inspect.getsourcelines(models.ParamDependent.forward)
    read = first + next(i for i, line in enumerate(lines) if "if y.sum() > 0" in line)
    assert note.reason.endswith(f", at models.py:{read}")


def test_a_module_on_meta_cannot_be_rebuilt() -> None:
    with torch.device("meta"):
        model = models.ParamDependent()
    with pytest.raises(MetaDeviceError, match=r"use device='cpu'"):
        execorder.profile(model, input_size=(2, 4))


def test_a_device_for_a_module_elsewhere_is_refused() -> None:
    with pytest.raises(InstanceDeviceError, match=r"device='meta' does not apply"):
        execorder.profile(Model(), device="meta")


def test_a_constructor_that_needs_values_is_built_on_cpu_with_a_note() -> None:
    result = execorder.profile(models.NeedsRealTensors)
    (note,) = result.notes
    assert note.kind is NoteKind.BUILT_ON_CPU and note.subject == "NeedsRealTensors()"
    assert "built it on CPU" in note.message and result.device == "cpu"


@pytest.mark.parametrize(
    "size",
    [
        (2, 6),
        [2, 6],
        torch.Size([2, 6]),
        "[2,6]",
        "float32[2, 6]",
        "x=float32[2,6]",
        {"x": (2, 6)},
        {"x": "float32[2,6]"},
        [(2, 6)],
        InputSpec(None, "float32", (2, 6)),
    ],
    ids=repr,
)
def test_input_sizes_as_torchinfo_takes_them(size: object) -> None:
    report = execorder.profile(
        Model, input_size=size, mode="eager", concrete_args={"run_all_layers": True}
    ).report
    assert list(report.inputs.values()) == ["float32[2, 6]"]
    assert [p.name for p in report.unused] == ["weight_unused"]


@pytest.mark.parametrize(
    "inputs",
    [
        torch.randn(2, 6),
        (torch.randn(2, 6),),
        {"x": torch.randn(2, 6)},
        ((torch.randn(2, 6),), {"run_all_layers": True}),
        lambda: torch.randn(2, 6),
        lambda device: {"x": torch.randn(2, 6, device=device)},
    ],
    ids=["tensor", "tuple", "dict", "args-kwargs", "factory", "factory-device"],
)
def test_real_inputs_and_factories(inputs: object) -> None:
    report = execorder.profile(
        Model, inputs=inputs, mode="eager", concrete_args={"run_all_layers": True}
    ).report
    assert list(report.inputs.values()) == ["float32[2, 6]"]
    assert [p.name for p in report.unused] == ["weight_unused"]


def test_a_seed_makes_a_routing_model_deterministic_and_leaves_the_global_state() -> None:
    state = torch.get_rng_state()
    runs = [
        execorder.profile(MoE, input_size="float32[4,16]", seed=7, device="cpu").report
        for _ in range(2)
    ]
    assert runs[0] == runs[1]
    assert torch.equal(torch.get_rng_state(), state)
    seeds = {
        tuple(
            p.name
            for p in execorder.profile(
                MoE, input_size="float32[4,16]", seed=s, device="cpu"
            ).report.unused
        )
        for s in range(6)
    }
    assert len(seeds) > 1  # the seed is what decides the routing


def test_routing_on_meta_rests_on_an_assumption_that_covers_every_real_run() -> None:
    """On meta the router's choice is unknown: every expert is assumed to get tokens, and said."""
    on_meta = execorder.profile(MoE, input_size="float32[4,16]", backward=True)
    report = on_meta.report
    assert on_meta.device == "meta" and on_meta.notes == ()
    (assumption,) = report.assumptions
    assert (assumption.op, assumption.module, assumption.where) == ("aten.nonzero", "", "moe.py:35")
    assert assumption.count == 8  # once an expert
    assert report.unused == () and report.dead == ()
    # The selection is made in the root's forward: every parameter may rest on it.
    assert {p.name for p in report.on_assumption} == {p.name for p in report.all_params()}
    for seed in range(4):
        real = execorder.profile(
            MoE, input_size="float32[4,16]", seed=seed, device="cpu", backward=True
        ).report
        # A real run routes for real, and says which choice it made from values.
        made = [(a.op, a.where, a.count, a.assumed) for a in real.assumptions]
        assert made == [("nonzero", "moe.py:35", 8, AssumptionKind.COMPUTED)]
        assert {p.name for p in real.on_assumption} == {p.name for p in report.on_assumption}
        # What a real run leaves without a gradient is all marked as resting on it.
        assert {p.name for p in real.no_grad()} <= {p.name for p in report.on_assumption}


def test_a_profiler_keeps_its_fallbacks_for_a_sweep() -> None:
    profiler = Profiler(models.ParamDependent, input_size="float32[2,4]")
    first = profiler.run()
    assert [n.kind for n in first.notes] == [NoteKind.RERAN_ON_CPU]
    again = profiler.run()
    assert again.notes == first.notes and again.device == "cpu"  # it stays on CPU
    result = Profiler(Model).sweep([("run_all_layers", [True, False])])
    assert [p.name for p in result.by_status("some")] == ["weight2", "layer1.weight"]


def test_progress_is_told_each_slow_step() -> None:
    steps: list[str] = []
    execorder.profile(models.ParamDependent, input_size=(2, 4), progress=steps.append)
    assert steps == [
        "Building ParamDependent on meta",
        "Running ParamDependent on meta",
        "Building ParamDependent on cpu",
        "Running ParamDependent on cpu",
    ]
    assert execorder.profile(Model, progress=steps.append, concrete_args={"run_all_layers": 1})
    assert steps[-1] == "Tracing Model with torch.fx"


def test_a_sweep_tells_which_combination_runs() -> None:
    import execorder.fsdp

    steps: list[str] = []
    profiler = execorder.Profiler(Model, progress=steps.append)
    profiler.sweep([("run_all_layers", [True, False])])
    assert steps[-2:] == [
        "Tracing Model with torch.fx (combination 1 of 2)",
        "Tracing Model with torch.fx (combination 2 of 2)",
    ]
    steps.clear()
    execorder.fsdp.plan_and_report(profiler, sweep=[("run_all_layers", [True, False])])
    assert steps == [
        "Tracing Model with torch.fx (combination 1 of 2)",
        "Tracing Model with torch.fx (combination 2 of 2)",
    ]
    profiler.run({"run_all_layers": True})
    assert steps[-1] == "Tracing Model with torch.fx"


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"mode": "fx", "backward": True}, "backward=True needs mode='eager' (or auto)"),
        ({"mode": "fx", "input_size": (2, 6)}, "input_size and inputs apply to mode='eager'"),
        ({"mode": "eager"}, "eager mode runs forward for real: give its inputs with input_size"),
        ({"backward": True}, "backward=True runs forward for real: give its inputs with"),
        ({"memory": "sgd"}, "memory runs forward for real: give its inputs with"),
    ],
)
def test_options_that_do_not_fit_the_mode(options: dict[str, object], words: str) -> None:
    with pytest.raises(ModeError, match=words.replace("(", r"\(").replace(")", r"\)")):
        execorder.profile(Model, **options)
