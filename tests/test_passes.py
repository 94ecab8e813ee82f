"""A gradient in several backward passes: reentrant checkpoints run backwards of their own.

Every backend counts the passes alike; the JSON carries them; the DDP check
fails on them and ``--fail-on reentrant`` gates on them, in Python as on the
command line. That DDP really fails where they are found is
``tests/test_ddp.py``'s to show (two ranks: it raises, or ranks drift apart).
"""

from __future__ import annotations

import json

import models
import pytest
import torch
from cases import CASES, Case
from typer.testing import CliRunner

import execorder
import execorder.fsdp
from execorder import eager
from execorder.cli.app import app
from execorder.errors import SchemaError
from execorder.output.views import ddp_verdict
from execorder.report import Category, Report

runner = CliRunner()
SPLIT = {"block.weight": 2, "block.bias": 2}
REUSED = ["checkpoint-reused-twice", "checkpoint-reused-after", "checkpoint-reused-first"]


def _runs(case: Case) -> dict[str, Report]:
    torch.manual_seed(0)
    args = case.inputs()
    on_meta = tuple(a.to("meta") for a in args)
    return {
        "fx": execorder.trace(case.build()),
        "eager": eager.trace(case.build(), args=args),
        "backward": eager.trace(case.build(), args=args, backward=True),
        "meta": eager.trace(case.build().to("meta"), args=on_meta),
    }


@pytest.mark.parametrize("name", REUSED)
def test_every_backend_counts_the_passes_alike(name: str) -> None:
    """FX by checkpoint region, eager by walking the recomputed blocks, a backward by hooks."""
    for how, report in _runs(CASES[name]).items():
        assert dict(report.split_gradients) == SPLIT, how


@pytest.mark.parametrize("name", ["checkpoint-reentrant", "checkpoint-non-reentrant", "tied"])
def test_one_pass_is_no_finding(name: str) -> None:
    for how, report in _runs(CASES[name]).items():
        assert report.split_gradients == {}, how
        assert "split_gradients" not in report.to_dict(), how


def test_a_parameter_passed_into_the_block_gets_its_gradient_around_it() -> None:
    """An argument of the block is detached inside it: its gradient is returned to the pass
    around, so a parameter passed in and also used outside is one pass."""

    class PassedIn(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(4))
            self.lin = torch.nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            from torch.utils.checkpoint import checkpoint

            h = checkpoint(lambda t, w: self.lin(t * w), x * self.w, self.w, use_reentrant=True)
            return h

    x = torch.randn(2, 4)
    assert execorder.trace(PassedIn()).split_gradients == {}
    assert eager.trace(PassedIn(), args=(x,)).split_gradients == {}
    assert eager.trace(PassedIn(), args=(x,), backward=True).split_gradients == {}


def test_the_json_carries_them_and_reads_them_back() -> None:
    report = execorder.trace(models.CheckpointReused())
    data = json.loads(json.dumps(report.to_dict()))
    assert data["split_gradients"] == SPLIT
    assert Report.from_dict(data) == report
    data["split_gradients"] = {"block.weight": "2"}
    with pytest.raises(SchemaError, match=r"split_gradients\.block\.weight"):
        Report.from_dict(data)


def test_the_ddp_check_fails_on_them_and_says_what_to_do() -> None:
    verdict = ddp_verdict(execorder.trace(models.CheckpointReused("after")))
    assert verdict.cells[1].text == (
        "fails: 2 trainable parameters get their gradient in several backward passes "
        "(block.weight, block.bias: reentrant checkpoints run their own); DDP raises, or "
        "all-reduces before the last part arrives and ranks drift apart: use "
        "use_reentrant=False, or DDP(static_graph=True)"
    )
    assert verdict.severity.value == "error"


def test_the_gate_is_opt_in_and_the_same_in_python_and_on_the_command_line() -> None:
    report = execorder.trace(models.CheckpointReused())
    assert report.failing(["unused", "dead"]) == {}
    assert dict(report.failing(["reentrant"])) == {Category.REENTRANT: tuple(SPLIT)}
    command = ["trace", "tests/models.py:CheckpointReused", "-f", "json", "-o", "/dev/null"]
    result = runner.invoke(app, [*command, "--fail-on", "reentrant"])
    assert result.exit_code == 1, result.output
    assert "execorder: check failed: reentrant: 2 (block.weight, block.bias) (their" in (
        result.stderr
    )
    assert runner.invoke(app, [*command, "--fail-on", "unused,dead"]).exit_code == 0
    result = runner.invoke(app, [*command, "--fail-on", "reentrant", "--sweep", "x=1,2"])
    assert result.exit_code == 2
    assert "--fail-on reentrant gates one run's backward passes: not with --sweep" in (
        result.stderr
    )


def test_a_backward_of_several_outputs_counts_passes_by_its_hooks_alone() -> None:
    """trace(backward=True) walks each output before the backward: the hooks still decide."""

    class TwoOutputs(models.CheckpointReused):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
            out = super().forward(x)
            return out, out * 2

    x = torch.randn(2, 4)
    assert dict(eager.trace(TwoOutputs(), args=(x,), backward=True).split_gradients) == SPLIT
    assert dict(eager.trace(TwoOutputs(), args=(x,)).split_gradients) == SPLIT


def test_the_calls_a_recompute_makes_again_are_known_alike_in_every_backend() -> None:
    """FX by checkpoint region, eager by the checkpoint's forward: the calls inside a block."""
    runs = _runs(CASES["checkpoint-loop"])
    names = [c.name for c in runs["fx"].modules]
    recomputed = [names[i] for i in runs["fx"].recomputed_calls]
    assert recomputed == ["encoder.layer", "encoder.layer"]
    for how, report in runs.items():
        assert report.recomputed_calls == runs["fx"].recomputed_calls, how
    data = json.loads(json.dumps(runs["fx"].to_dict()))
    assert Report.from_dict(data).recomputed_calls == runs["fx"].recomputed_calls
    assert "recomputed_calls" not in execorder.trace(models.ReadForShapeOnly()).to_dict()


def test_a_plan_flags_a_unit_whose_last_backward_is_a_recompute() -> None:
    from execorder.analysis.sharding import CheckKind

    def flagged(units: list[str], **options: object) -> list[tuple[str, ...]]:
        plan = execorder.fsdp.plan(models.CheckpointLoop(), units=units, **options)
        return [c.units for c in plan.checks if c.kind is CheckKind.SPLIT_GRADIENT]

    assert flagged(["encoder.layer"]) == [("encoder.layer",)]
    assert flagged(["encoder.layer"], input_size=(2, 4)) == [("encoder.layer",)]  # eager
    assert flagged(["encoder"]) == []
    first = execorder.fsdp.plan(models.CheckpointReusedFirst(), units=["block"])
    assert not [c for c in first.checks if c.kind is CheckKind.SPLIT_GRADIENT]


@pytest.mark.parametrize("mode", ["fx", "eager"])
def test_advice_for_a_split_by_the_models_own_checkpoint_names_it(mode: str) -> None:
    """``use_reentrant`` is torch's option: a split made by the model's own checkpoint
    Function (Megatron-LM's shape) is told to use torch's checkpoint in its place."""
    from execorder.errors import SplitGradientError
    from execorder.training import StepWatch

    x = torch.randn(2, 4)
    own = models.OwnCheckpointReused()
    report = execorder.trace(own) if mode == "fx" else eager.trace(own, args=(x,))
    assert report.split_gradients and report.own_checkpoints == ("_RecomputingCheckpoint",)
    instead = "torch.utils.checkpoint(use_reentrant=False) in place of _RecomputingCheckpoint"
    assert ddp_verdict(report).cells[1].text.endswith(f"{instead}, or DDP(static_graph=True)")
    plan = execorder.fsdp.plan(models.OwnCheckpointReused(), units=["block"])
    (split,) = [c for c in plan.checks if c.kind == "split-gradient"]
    assert f"checkpoint with {instead}, or make the module" in split.message
    watch = StepWatch(stop_on_no_grad=True)
    watch.begin(own, 1)
    own(x).sum().backward()
    with pytest.raises(SplitGradientError) as caught:
        watch.end()
    assert str(caught.value).endswith(f". Checkpoint with {instead}, or DDP(static_graph=True)")
    data = json.loads(json.dumps(report.to_dict()))
    assert data["own_checkpoints"] == ["_RecomputingCheckpoint"]
    assert Report.from_dict(data) == report
    torch_only = execorder.trace(models.CheckpointReused())
    assert torch_only.own_checkpoints == () and "own_checkpoints" not in torch_only.to_dict()
    assert "use use_reentrant=False, or DDP" in ddp_verdict(torch_only).cells[1].text


def test_the_summary_says_find_unused_parameters_fails_on_a_gradient_only_a_recompute_gives() -> (
    None
):
    """Said in its own row (DDP's default is fine), with the parameters and what trains."""
    from execorder.errors import NoGradientError
    from execorder.output.views.report import find_unused_fact

    report = execorder.trace(models.Checkpointed())
    assert report.recompute_only == tuple(
        f"blocks.{i}.{layer}.{kind}"
        for i in (0, 1)
        for layer in ("up", "down")
        for kind in ("weight", "bias")
    )
    assert ddp_verdict(report).cells[1].text.startswith("ok")
    text = find_unused_fact(report).cells[1].text
    assert text.startswith("with find_unused_parameters=True fails: 8 trainable parameters")
    assert text.endswith("use use_reentrant=False, or DDP(static_graph=True)")
    data = json.loads(json.dumps(report.to_dict()))
    assert data["recompute_only"] == list(report.recompute_only)
    assert Report.from_dict(data) == report
    assert "recompute_only" not in execorder.trace(models.Checkpointed(False)).to_dict()
    said = str(NoGradientError(1, ["aux.weight"], [4], under_ddp=True, recompute_only=["b.w"]))
    assert "with static_graph=True (find_unused_parameters=True fails here: 1 other" in said
    # A parameter no DDP numbers is named all the same (before, it and those after went unsaid).
    said = str(NoGradientError(1, ["a.w", "b.w", "c.w"], [None, 4, 5], under_ddp=False))
    assert said.startswith("step 1: 3 trainable parameters got no gradient: a.w, b.w (DDP index 4)")
    # A DDP searching for unused parameters that did not finish all the same (its own check):
    # the message does not advise the setting it has.
    said = str(NoGradientError(2, ["a.w"], [0], under_ddp=True, static_graph=None))
    assert "DDP (find_unused_parameters=True) fails on them at the next step" in said
    assert said.endswith("Use them in the loss, or freeze them (requires_grad_(False))")


def test_a_gate_fails_on_what_find_unused_parameters_would_fail_on() -> None:
    """``--fail-on recompute-only``: the same in Python and on the command line; one run's."""
    report = execorder.trace(models.Checkpointed())
    found = report.failing(["recompute-only"])
    assert dict(found) == {Category.RECOMPUTE_ONLY: report.recompute_only}
    assert execorder.trace(models.Checkpointed(False)).failing(["recompute-only"]) == {}
    command = ["trace", "tests/models.py:Checkpointed", "-f", "json", "-o", "/dev/null"]
    result = runner.invoke(app, [*command, "--fail-on", "recompute-only"])
    assert result.exit_code == 1, result.output
    assert "execorder: check failed: recompute-only: 8 (blocks.0.up.weight," in result.stderr
    assert "DDP with find_unused_parameters=True takes them for unused" in result.stderr
    swept = runner.invoke(app, [*command, "--fail-on", "recompute-only", "--sweep", "x=1,2"])
    assert swept.exit_code == 2 and "not with --sweep" in swept.stderr


# -- backwards of the caller's own -------------------------------------------------------------


def _recorded(model: torch.nn.Module, step: str) -> Report:
    """A step of ``models.TwoHeads`` (or another two-output model) with its losses as ``step``
    writes them: ``each`` a backward per head, ``summed`` one, ``decay`` a backward of a
    penalty on one weight alone after it, ``penalty`` an ``autograd.grad`` first."""
    torch.manual_seed(0)
    x = torch.randn(3, 4, requires_grad=step == "penalty")
    with execorder.record(model) as recording:
        policy, value = model(x)
        if step == "each":
            policy.sum().backward(retain_graph=True)
            value.sum().backward()
        elif step == "penalty":
            (slope,) = torch.autograd.grad(value.sum(), x, create_graph=True)
            (policy.sum() + value.sum() + slope.pow(2).sum()).backward()
        else:
            (policy.sum() + value.sum()).backward()
            if step == "decay":
                model.value.weight.pow(2).sum().backward()
    return recording.report()


def test_a_backward_per_loss_splits_what_both_losses_reach() -> None:
    """The body is in both losses' graphs; each head in its own: only the body is split, by the
    caller's backwards, which DDP (static_graph too) cannot take."""
    report = _recorded(models.TwoHeads(), "each")
    assert report.split_by_backwards == ("body.weight", "body.bias")
    assert dict(report.split_gradients) == {"body.weight": 2, "body.bias": 2}
    data = json.loads(json.dumps(report.to_dict()))
    assert data["split_by_backwards"] == ["body.weight", "body.bias"]
    assert Report.from_dict(data) == report
    verdict = ddp_verdict(report)
    assert verdict.cells[1].text == (
        "fails: 2 trainable parameters get their gradient from several backward calls over "
        "one forward (body.weight, body.bias); DDP reduces a parameter once a forward under "
        "every setting, static_graph=True too: it raises, or the ranks drift apart: add the "
        "losses and call backward once"
    )
    assert verdict.severity.value == "error"


@pytest.mark.parametrize("step", ["summed", "decay", "penalty"])
def test_one_backward_through_forward_splits_nothing(step: str) -> None:
    """One backward of the summed losses; a penalty on a weight alone in a backward of its own
    (not through forward's graph); a gradient penalty's autograd.grad, which accumulates
    nothing: no gradient of forward's arrives in parts."""
    report = _recorded(models.TwoHeads(), step)
    assert report.split_gradients == {} and report.split_by_backwards == ()
    assert report.ddp_unreduced == ()  # no DDP ran it
    assert all(p.gets_gradient for p in report.params)
    assert ddp_verdict(report).cells[1].text.startswith("ok")


def test_a_reentrant_checkpoint_inside_each_backward_counts_as_that_backward() -> None:
    """The block's recompute runs a pass of its own inside each of the caller's backwards: two
    passes each time, but parts from two backwards, as the parameters outside have."""

    class Checkpointed(models.TwoHeads):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            from torch.utils.checkpoint import checkpoint

            h = checkpoint(self.body, self.embed(x), use_reentrant=True)
            return self.policy(h), self.value(h)

    report = _recorded(Checkpointed(), "each")
    both = ("body.weight", "body.bias", "embed.weight", "embed.bias")
    assert report.split_by_backwards == both
    assert dict(report.split_gradients) == dict.fromkeys(both, 2)
    one = _recorded(Checkpointed(), "summed")
    assert one.split_by_backwards == () and one.split_gradients == {}


def test_a_watch_names_the_backwards_and_what_to_do() -> None:
    from execorder.errors import SplitGradientError
    from execorder.training import StepWatch

    model, watch = models.TwoHeads(), StepWatch(stop_on_no_grad=True)
    watch.begin(model, 1)
    policy, value = model(torch.randn(3, 4))
    policy.sum().backward(retain_graph=True)
    value.sum().backward()
    with pytest.raises(SplitGradientError) as caught:
        watch.end()
    assert caught.value.by_backwards == ("body.weight", "body.bias")
    assert str(caught.value) == (
        "step 1: 2 trainable parameters got their gradient in several backward passes "
        "(backward ran more than once over one forward): body.weight (2 passes), body.bias "
        "(2 passes). Add the losses and call backward once, (loss_a + loss_b).backward()"
    )


def test_a_report_with_gradients_static_graph_left_unreduced_fails_the_ddp_check() -> None:
    """What a recorded first step under DDP(static_graph=True) left unreduced (a gradient
    penalty's autograd.grad first) is in the JSON, and the DDP check fails on it."""
    import dataclasses

    report = dataclasses.replace(
        _recorded(models.TwoHeads(), "penalty"), ddp_unreduced=("body.weight", "body.bias")
    )
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ddp_unreduced"] == ["body.weight", "body.bias"]
    assert Report.from_dict(data) == report
    verdict = ddp_verdict(report)
    assert verdict.severity.value == "error"
    assert verdict.cells[1].text == (
        "fails: 2 trainable parameters (body.weight, body.bias) get their gradient only after "
        "the first backward through forward's outputs (an autograd.grad before the loss's); "
        "DDP with static_graph=True all-reduces at the end of that one in its first step, so "
        "they are never all-reduced and the ranks drift apart: wrap the model without "
        "static_graph=True"
    )


def test_a_diff_says_what_ddp_would_do_otherwise_between_two_recorded_steps() -> None:
    """A gradient now split across backward calls, and one static_graph's first step left
    unreduced: both change what DDP does while every parameter still gets a gradient."""
    import dataclasses

    from execorder.analysis import diff_reports

    summed, each = _recorded(models.TwoHeads(), "summed"), _recorded(models.TwoHeads(), "each")
    split = {(c.name, str(c.what), c.old, c.new) for c in diff_reports(summed, each).params}
    for name in ("body.weight", "body.bias"):
        assert (name, "backward passes", "1", "2") in split
        assert (name, "now split by backwards", "one pass", "several backward calls") in split
    penalty = _recorded(models.TwoHeads(), "penalty")
    late = dataclasses.replace(penalty, ddp_unreduced=("body.weight",))
    changed = diff_reports(penalty, late)
    assert [(c.name, str(c.what), c.old, c.new) for c in changed.params] == [
        ("body.weight", "now unreduced by DDP", "reduced", "unreduced")
    ]
    assert not changed.equivalent
    back = diff_reports(late, penalty).params
    assert [(c.name, str(c.what)) for c in back] == [("body.weight", "no longer unreduced by DDP")]
