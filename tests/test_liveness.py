"""Gradient liveness: execorder's no-gradient prediction equals a real backward."""

from __future__ import annotations

import json

import models
import pytest
import torch
import torch.nn as nn
from cases import CASES, Case, backward_no_grad, predict, unseen_backward_resting
from seed import Model
from typer.testing import CliRunner

import execorder
import execorder.fsdp
from execorder import eager
from execorder.cli import app
from execorder.errors import ControlFlowError, DifferentiatesError, ScriptedModuleError
from execorder.report import AssumptionKind, Report


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_unused_plus_dead_is_exactly_no_grad_after_backward(case: Case) -> None:
    """Exactly, for every parameter whose status rests on no assumption; those that do
    (what a custom Function's unseen backward decides) are taken as dead, and say so."""
    report = predict(case)
    resting = unseen_backward_resting(report)
    predicted = [p.name for p in report.no_grad() if p.name not in resting]
    assert predicted == [name for name in backward_no_grad(case) if name not in resting]
    assert resting <= {p.name for p in report.dead}


def test_a_custom_functions_unseen_backward_decides_either_way() -> None:
    """A reversible Function's backward gives the blocks it was handed a gradient, _Closure's
    gives ``closure`` none: forward alone cannot tell them apart, so both rest on the
    assumption, named; a recorded real backward decides each."""
    case = CASES["unseen-backwards"]
    blocks = [f"blocks.{i}.{kind}" for i in range(2) for kind in ("weight", "bias")]
    assert backward_no_grad(case) == ["closure"]  # the two outcomes are both there
    torch.manual_seed(0)
    walked = [predict(case), eager.trace(case.build(), args=case.inputs())]
    for report in walked:
        assert sorted(p.name for p in report.on_assumption) == sorted(["closure", *blocks])
        assert [a.op for a in report.assumptions] == ["_Reversible.backward", "_Closure.backward"]
        assert {a.assumed for a in report.assumptions} == {AssumptionKind.BACKWARD}
    ran = eager.trace(case.build(), args=case.inputs(), backward=True)
    assert [p.name for p in ran.no_grad()] == ["closure"] and not ran.assumptions


def test_what_an_unseen_backward_decides_is_said_and_kept() -> None:
    """The DDP check says "not proven" when all it would fail on rests on an unseen backward,
    counts it apart when something fails for sure; the JSON names what was assumed and reads
    back; an FSDP plan's order does not rest on it."""
    from execorder.analysis.sharding import CheckKind
    from execorder.output.views import ddp_verdict

    report = execorder.trace(models.UnseenBackwards())
    verdict = ddp_verdict(report).cells[1].text
    assert verdict.startswith("not proven: 5 trainable parameters (closure, blocks.0.weight")
    assert "(_Reversible, _Closure)" in verdict and verdict.endswith("decides: backward=True")

    class WithSpare(models.UnseenBackwards):
        def __init__(self) -> None:
            super().__init__()
            self.spare = nn.Parameter(torch.ones(2))

    verdict = ddp_verdict(execorder.trace(WithSpare())).cells[1].text
    assert verdict == (
        "fails: 1 trainable parameter gets no gradient (5 others may, from a custom autograd "
        "Function's unseen backward)"
    )
    data = json.loads(json.dumps(report.to_dict()))
    assert [a["assumed"] for a in data["assumptions"]] == [
        "no gradient for what it was not passed"
    ] * 2
    assert Report.from_dict(data).to_dict() == data
    with torch.device("meta"):
        on_meta = eager.trace(models.UnseenBackwards(), args=(torch.randn(2, 4),))
    assert on_meta.assumptions  # what the plan's run assumes too; its order rests on none:
    plan = execorder.fsdp.plan(models.UnseenBackwards, input_size=(2, 4))
    assert not [c for c in plan.checks if c.kind is CheckKind.ASSUMPTION]


@pytest.mark.slow
def test_a_loss_on_the_main_output_alone_misses_exactly_the_parameters_reached_elsewhere() -> None:
    checked = []
    for name, case in CASES.items():
        torch.manual_seed(0)
        model = case.build()
        eagerly = eager.trace(model, args=case.inputs(), kwargs=case.concrete_args)
        for report in (predict(case), eagerly):
            reach = report.output_reach
            if reach is None:
                continue
            checked.append(name)
            # A real backward of a loss on each output alone misses just those it names.
            no_grad = {p.name for p in report.no_grad()}
            for output in reach.outputs:
                missed = no_grad | set(reach.misses.get(output, ()))
                assert sorted(missed) == sorted(backward_no_grad(case, only=output)), (name, output)
            assert len(reach.misses.get(reach.main, ())) == min(
                len(reach.misses.get(o, ())) for o in reach.outputs
            )
    assert {"two-heads", "structured-outputs"} <= set(checked)


def test_seed_dead_parameters() -> None:
    report = execorder.trace(Model(), concrete_args={"run_all_layers": True})
    assert [p.name for p in report.dead] == [
        "layer2.0.weight", "layer2.2.weight", "weight1", "layer1.weight", "weight2",
    ]  # fmt: skip
    assert [p.name for p in report.unused] == ["weight_unused"]
    assert report.summary.params_no_grad == 6
    # The indices DDP prints for this model: 0 1 2 5 6 7.
    order = report.ddp_order()
    assert [order.index(p) for p in report.no_grad()] == [0, 1, 2, 5, 6, 7]


def test_dead_entries_keep_where_they_were_used() -> None:
    dead = {p["name"]: p for p in execorder.trace(models.Frozen()).to_dict()["dead"]}
    assert set(dead) == {"aux.weight", "aux.bias"}
    assert dead["aux.weight"]["first_module"] == "aux"
    assert dead["aux.weight"]["owner"] == "aux"


def test_frozen_parameters_are_shown_but_not_predicted() -> None:
    report = execorder.trace(models.Frozen())
    # named_parameters() yields a module's own parameters before its children's.
    assert [p.name for p in report.frozen] == ["unused_frozen", "embed.weight", "head.bias"]
    assert "unused_frozen" in {p.name for p in report.unused}
    assert "unused_frozen" not in {p.name for p in report.no_grad()}
    assert report.summary.params_frozen == 3
    assert [p.name for p in report.ddp_order()][:3] == ["unused", "embed.bias", "mid.weight"]


def test_shape_reads_and_detach_do_not_keep_a_parameter_alive() -> None:
    report = execorder.trace(models.ShapeOnly())
    # w is only read for its shape: not a use at all; v is used, but detached.
    assert [p.name for p in report.unused] == ["w"]
    assert [p.name for p in report.dead] == ["v"]
    assert {p.name for p in report.no_grad()} == {"w", "v"}


def test_in_place_writes_keep_a_parameter_alive() -> None:
    assert execorder.trace(models.InPlace()).dead == ()


def test_leaf_modules_fx_cannot_see_into_are_assumed() -> None:
    report = execorder.trace(models.OpaqueLeaf())
    assumed = {p.name for p in report.params if p.assumed}
    assert assumed == {n for n, _ in models.OpaqueLeaf().lstm.named_parameters(prefix="lstm")}
    assert not report.param("head.weight").assumed
    assert report.summary.params_assumed == 4


def test_a_torch_nn_module_using_parameters_by_value_is_traced_into_not_assumed() -> None:
    """FX would make AdaptiveLogSoftmaxWithLoss a leaf and call every cluster used ("ok").

    Traced into, its forward branches on the targets: FX says so, and eager
    with targets in the head cluster only sees the tails get no gradient.
    """
    with pytest.raises(ControlFlowError, match="'target'"):
        execorder.trace(models.AdaptiveHead())
    torch.manual_seed(0)
    model = models.AdaptiveHead()
    args = (torch.randn(4, 8), torch.tensor([0, 1, 2, 3]))
    report = eager.trace(model, args=args)
    model(*args).backward()
    real = [n for n, p in model.named_parameters() if p.grad is None]
    assert real and all(name.startswith("head.tail.") for name in real)
    assert [p.name for p in report.no_grad()] == real


def test_tracing_leaves_the_model_as_it_was() -> None:
    """FX sets what forward computed outside the trace on the root; it is taken back."""
    model = models.ReadThroughParameters()
    before = set(vars(model))
    report = execorder.trace(model)
    assert set(vars(model)) == before
    assert report.param("head.weight").first_module == ""  # the root read it


def test_external_use_is_flagged() -> None:
    report = execorder.trace(models.ExternalUse())
    assert [(u.param, u.owner, u.used_by, u.call) for u in report.external] == [
        ("lin.weight", "lin", "", 0)
    ]
    assert report.to_dict()["external"] == [
        {"name": "lin.weight", "owner": "lin", "used_by": "", "call": 0}
    ]


def test_uses_inside_the_owner_or_passed_down_are_not_external() -> None:
    for build in (Model, models.LeafArgParam, models.CalledTwice):
        assert execorder.trace(build(), concrete_args=_concrete(build)).external == ()


def _concrete(build: object) -> dict[str, object]:
    return {"run_all_layers": True} if build is Model else {}


def test_ddp_index_is_not_the_named_parameters_index_when_frozen_ones_come_first() -> None:
    report = execorder.trace(models.Frozen())
    unused = report.param("unused")
    assert (unused.index, unused.ddp_index) == (
        1,
        0,
    )  # unused_frozen comes first, not in DDP's count
    assert report.param("unused_frozen").ddp_index is None
    assert [p.ddp_index for p in report.ddp_order()] == list(range(len(report.ddp_order())))
    data = report.to_dict()
    assert {p["name"]: p["ddp_index"] for p in data["unused"]} == {
        "unused_frozen": None,
        "unused": 0,
    }


class _TwoViews(torch.nn.Module):
    """Two outputs, each reached by every parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.lin(x)
        return h, h * 2


class _Pooled(torch.nn.Module):
    """Hidden states and a pooler's output of them, as BERT returns them."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        self.pool = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.lin(x)
        return {"hidden": h, "pooled": self.pool(h[0])}


def test_the_ddp_check_is_not_ok_when_a_loss_on_the_main_output_alone_misses_parameters() -> None:
    from execorder.output.document import Severity
    from execorder.output.views import ddp_verdict

    verdict = ddp_verdict(execorder.trace(models.TwoHeads()))
    assert verdict.severity is Severity.WARNING
    assert verdict.cells[1].text == (
        "not proven: 2 trainable parameters get a gradient only through output 1, not 0 "
        "(value.weight, value.bias); a loss that does not read it leaves them without one"
    )
    # Several outputs, either of them enough: ok.
    verdict = ddp_verdict(execorder.trace(_TwoViews()))
    assert verdict.severity is Severity.OK
    assert verdict.cells[1].text == (
        "ok: every trainable parameter gets a gradient, through any one output alone"
    )
    # One of them enough, the other not (BERT's hidden states and pooler): ok through
    # it, naming the other.
    verdict = ddp_verdict(execorder.trace(_Pooled()))
    assert verdict.severity is Severity.OK
    assert verdict.cells[1].text == (
        "ok through output pooled: a loss on hidden alone misses 2 trainable parameters "
        "(pool.weight, pool.bias)"
    )
    # One output: as before.
    report = execorder.trace(models.KeywordParam())
    assert report.output_reach is None
    assert ddp_verdict(report).cells[1].text == "ok: every trainable parameter gets a gradient"


class _RunsItselfAgainOddly(torch.autograd.Function):
    """Keeps a ``run_function`` it calls with a flag: its saved tensors alone cannot rerun it."""

    @staticmethod
    def forward(ctx, run_function, flag, x):  # type: ignore[no-untyped-def, override]
        ctx.run_function = run_function
        with torch.no_grad():
            out = run_function(x, flag)
        ctx.save_for_backward(x)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def, override]
        return None, None, grad


class _Odd(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = torch.nn.Linear(4, 4)
        self.embed = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _RunsItselfAgainOddly.apply(lambda t, flag: self.inner(t), True, self.embed(x))


def test_a_checkpoint_like_function_that_cannot_run_again_is_walked_as_any_function() -> None:
    """Its backward passes the gradient to its input only: ``inner`` really gets none."""
    x = torch.randn(2, 4)
    model = _Odd()
    model(x).sum().backward()
    real = [n for n, p in model.named_parameters() if p.grad is None]
    assert real == ["inner.weight", "inner.bias"]
    assert [p.name for p in eager.trace(_Odd(), args=(x,)).no_grad()] == real


def test_torchscript_is_seen_through_its_gradient_and_fx_says_why_it_cannot() -> None:
    """A TorchScript module or function reads parameters in C++: eager mode sees no op read
    them, but the gradient reaches them, so they are used (assumed, in the call that holds
    them), not unused; FX cannot see them read at all, and says so rather than guess."""
    case = CASES["torchscript"]
    report = eager.trace(case.build(), args=case.inputs())
    inner = ["inner.0.weight", "inner.0.bias", "inner.2.weight", "inner.2.bias"]
    assert {p.name for p in report.params if p.assumed} == {*inner, "w"}
    assert {report.param(n).first_module for n in inner} == {"inner"}
    assert not report.unused and not report.dead
    with pytest.raises(ScriptedModuleError) as caught:
        execorder.trace(case.build())
    assert (caught.value.module, caught.value.params) == ("inner", 4)


def test_fx_says_why_it_cannot_tell_what_a_derivative_taken_in_forward_depends_on() -> None:
    """``torch.autograd.grad`` in forward: FX recorded it as any op, and gave every parameter
    upstream a gradient, where a real backward gives a bias that drops out of the derivative
    none (eager mode, which runs it, is right: the case checks it)."""
    assert backward_no_grad(CASES["differentiates"]) == ["shift", "net.2.bias"]
    with pytest.raises(DifferentiatesError, match=r"takes a derivative \(torch\.autograd\.grad\)"):
        execorder.trace(models.Differentiates())


@pytest.mark.transformers
def test_reformers_reversible_layers_rest_on_their_unseen_backward() -> None:
    """transformers' Reformer runs its encoder in a reversible Function handed the layers:
    a walk called its 24 parameters dead, where a real backward gives them gradients."""
    transformers = pytest.importorskip("transformers")
    config = transformers.ReformerConfig(
        vocab_size=64, hidden_size=16, num_attention_heads=2, attention_head_size=8,
        feed_forward_size=32, axial_pos_embds=False, attn_layers=["local", "local"],
        num_hashes=1, local_attn_chunk_length=4, is_decoder=True, max_position_embeddings=16,
        num_buckets=2, pad_token_id=0, hidden_dropout_prob=0.0,
    )  # fmt: skip

    def build() -> nn.Module:
        torch.manual_seed(0)
        return transformers.ReformerModelWithLMHead(config).train()

    ids = {"input_ids": torch.randint(1, 64, (2, 8))}
    model = build()
    model(**ids).logits.sum().backward()
    truth = {n for n, p in model.named_parameters() if p.grad is None}
    walked = eager.trace(build(), kwargs=ids)
    resting = {p.name for p in walked.on_assumption}
    assert len(resting) == 24 and not resting & truth
    assert [a.op for a in walked.assumptions] == ["_ReversibleFunction.backward"]
    assert {p.name for p in walked.no_grad()} - resting == truth  # the rest, exactly
    ran = eager.trace(build(), kwargs=ids, backward=True)
    assert {p.name for p in ran.no_grad()} == truth and not ran.assumptions


@pytest.mark.parametrize("mode", ["fx", "eager"])
def test_parameters_a_never_recomputed_checkpoint_reads_are_named_with_the_cause(
    mode: str,
) -> None:
    """PyTorch's pitfall, said as such: a real backward gives the adapter nothing, and gives
    it a gradient once the blocks' input needs grad, or with use_reentrant=False; the side
    branch, dead for another cause, is not named."""
    ids = torch.randint(0, 16, (2, 3))
    report = execorder.profile(
        models.FrozenBaseAdapter, mode=mode, **({"inputs": (ids,)} if mode == "eager" else {})
    ).report
    adapter = ("adapter.0.weight", "adapter.1.weight")
    assert report.never_recomputed == adapter
    assert {p.name for p in report.dead} == {*adapter, "side.weight", "side.bias"}
    for options, given in (
        ({}, False),
        ({"input_grads": True}, True),
        ({"reentrant": False}, True),
    ):
        model = models.FrozenBaseAdapter(**options)
        model(ids).sum().backward()
        assert all((model.get_parameter(n).grad is not None) == given for n in adapter), options
    fixed = execorder.profile(
        lambda: models.FrozenBaseAdapter(input_grads=True), inputs=(ids,)
    ).report
    assert fixed.never_recomputed == () and {p.name for p in fixed.dead} == {
        "side.weight",
        "side.bias",
    }
    written = report.to_dict()
    assert written["never_recomputed"] == list(adapter)
    assert execorder.report.Report.from_dict(json.loads(json.dumps(written))) == report
    shown = CliRunner().invoke(
        app, ["trace", "tests/models.py:FrozenBaseAdapter", "--input", "int64[2,3]@0:16"]
    )
    said = " ".join(shown.stdout.split())
    assert "never recomputed 2 of the 4 dead parameters are read only inside reentrant" in said
    assert "use use_reentrant=False, or make an input of each block need grad" in said
    if mode == "eager":  # inside a training step, the watch says it too
        from execorder.errors import NoGradientError
        from execorder.training import StepWatch

        model, watch = models.FrozenBaseAdapter(), StepWatch(stop_on_no_grad=True)
        watch.begin(model, 1)
        model(ids).sum().backward()
        with pytest.raises(NoGradientError) as caught:
            watch.end()
        assert caught.value.never_recomputed == adapter
        assert "; 2 of them are read only inside reentrant checkpoints none of whose" in str(
            caught.value
        )
