"""Report-level checks of every recording rule of the FX backend."""

from __future__ import annotations

import models
import pytest
import torch
from reuse import Reuse
from seed import Model
from tied import TiedLM
from transformer import Transformer

import execorder
from execorder import ExecOrderTracer
from execorder.errors import ConcreteArgError, TraceFailure


def test_seed_module_order_and_calls() -> None:
    report = execorder.trace(Model(), concrete_args={"run_all_layers": True})
    assert [c.name for c in report.modules] == [
        "", "layer0", "relu", "layer2", "layer2.0", "layer2.1", "layer2.2",
        "relu", "layer1", "relu", "layer0", "relu",
    ]  # fmt: skip
    assert [c.repeat for c in report.modules if c.name == "relu"] == [0, 1, 2, 3]
    assert [c.repeat for c in report.modules if c.name == "layer0"] == [0, 1]
    assert [c.depth for c in report.modules[:5]] == [0, 1, 1, 1, 2]
    assert report.modules[4].parent == 3
    assert report.modules[0].type == "Model"


def test_seed_uses_have_full_qualified_names() -> None:
    report = execorder.trace(Model(), concrete_args={"run_all_layers": True})
    root = report.modules[0]
    assert [(g.module, g.params) for g in root.uses] == [
        ("layer0", ("layer0.weight", "layer0.bias")),
        ("layer2", ("layer2.0.weight", "layer2.2.weight")),
        ("", ("weight1",)),
        ("layer1", ("layer1.weight",)),
        ("", ("weight2",)),
        ("layer0", ("layer0.weight", "layer0.bias")),
    ]
    layer2 = report.modules[3]
    assert [g.params for g in layer2.uses] == [("layer2.0.weight",), ("layer2.2.weight",)]


def test_seed_param_order_unused_and_summary() -> None:
    report = execorder.trace(Model(), concrete_args={"run_all_layers": True})
    assert [p.name for p in report.params] == [
        "layer0.weight", "layer0.bias", "layer2.0.weight", "layer2.2.weight",
        "weight1", "layer1.weight", "weight2",
    ]  # fmt: skip
    assert [(p.first_module, p.first_call) for p in report.params[:5]] == [
        ("layer0", 1), ("layer0", 1), ("layer2.0", 4), ("layer2.2", 6), ("", 0),
    ]  # fmt: skip
    assert [(p.name, p.shape, p.numel, p.owner) for p in report.unused] == [
        ("weight_unused", (2, 2), 4, "")
    ]
    s = report.summary
    assert (s.calls, s.modules, s.params_total, s.params_used) == (12, 8, 8, 7)
    assert s.numel_unused == 4
    assert s.unused_fraction == pytest.approx(4 / s.numel_total)


def test_branch_not_taken_leaves_its_params_unused() -> None:
    report = execorder.trace(Model(), concrete_args={"run_all_layers": False})
    assert [p.name for p in report.unused] == ["weight2", "weight_unused", "layer1.weight"]
    assert "layer1" not in {c.name for c in report.modules}


def test_keyword_param_counts() -> None:
    report = execorder.trace(models.KeywordParam())
    assert [p.name for p in report.params] == ["weight", "bias"]
    assert report.modules[0].uses[0].params == ("weight", "bias")


def test_params_inside_lists_and_dicts_count() -> None:
    report = execorder.trace(models.NestedParams())
    assert [p.name for p in report.params] == ["a", "b", "c"]
    assert report.unused == ()


def test_param_fed_into_leaf_module_counts_for_the_caller() -> None:
    report = execorder.trace(models.LeafArgParam())
    assert [p.name for p in report.params] == ["w", "lin.weight", "lin.bias"]
    root, lin = report.modules
    assert root.uses[0].module == "" and root.uses[0].params == ("w",)
    assert lin.uses[0].params == ("lin.weight", "lin.bias")


def test_returned_param_counts() -> None:
    report = execorder.trace(models.ReturnedParam())
    assert report.param("scale").first_module == ""
    assert report.unused == ()


def test_forward_input_named_like_a_param_is_not_the_param() -> None:
    report = execorder.trace(models.InputNamedLikeParam())
    assert [p.name for p in report.unused] == ["weight"]


def test_each_call_keeps_its_own_usage() -> None:
    report = execorder.trace(models.CalledTwice())
    first, second = report.modules[1], report.modules[2]
    assert (first.name, first.repeat, second.repeat) == ("gate", 0, 1)
    assert [g.params for g in first.uses] == [("gate.base",)]
    assert [g.params for g in second.uses] == [("gate.base",), ("gate.extra",)]


def test_tied_parameters_are_reported_once_with_aliases() -> None:
    report = execorder.trace(TiedLM())
    tied = report.param("lm_head.weight")
    assert tied.name == "embed.weight"
    assert tied.aliases == ("lm_head.weight",)
    assert report.summary.params_total == len(list(TiedLM().parameters()))
    lm_head_call = next(c for c in report.modules if c.name == "lm_head")
    assert lm_head_call.uses[0].params == ("embed.weight",)


def test_shared_module_is_reported_under_its_first_name() -> None:
    report = execorder.trace(Reuse(repeats=3))
    names = [c.name for c in report.modules]
    assert names == ["", "block", "block.fc", "block", "block.fc", "block", "block.fc",
                     "proj", "proj"]  # fmt: skip
    assert all(c.aliases == ("out",) for c in report.modules if c.name == "proj")
    assert report.param("out.weight").name == "proj.weight"


def test_meta_and_cpu_models_give_the_same_report() -> None:
    with torch.device("meta"):
        on_meta = execorder.trace(Transformer(n_layers=2))
    on_cpu = execorder.trace(Transformer(n_layers=2))
    assert on_meta.to_dict() == on_cpu.to_dict()


@pytest.mark.parametrize("use_trace_api", [True, False])
def test_patched_methods_are_restored_when_tracing_raises(use_trace_api: bool) -> None:
    model = models.Raising()
    if use_trace_api:
        with pytest.raises(TraceFailure, match="boom in forward"):
            execorder.trace(model)
        return
    tracer = torch.fx.Tracer()
    before = (tracer.call_module, tracer.create_proxy, tracer.create_node)
    with pytest.raises(ValueError, match="boom"):  # noqa: SIM117
        with ExecOrderTracer().patch_tracer(tracer=tracer, root_module=model):
            tracer.trace(model)
    assert (tracer.call_module, tracer.create_proxy, tracer.create_node) == before
    assert "call_module" not in vars(tracer) and "create_node" not in vars(tracer)


def test_drop_in_works_with_a_tracer_subclass() -> None:
    class LeafLinears(torch.fx.Tracer):
        def is_leaf_module(self, m: torch.nn.Module, qualname: str) -> bool:
            return isinstance(m, torch.nn.Linear) or super().is_leaf_module(m, qualname)

    model = Transformer(n_layers=1)
    eo = ExecOrderTracer()
    tracer = LeafLinears()
    with eo.patch_tracer(tracer=tracer, root_module=model):
        tracer.trace(model)
    report = eo.report()
    assert report.unused == ()
    # Every module is called once, except the ModuleList, which is iterated.
    assert report.summary.calls == len(list(model.modules())) - 1
    assert "blocks" not in {c.name for c in report.modules}


def test_unknown_concrete_arg_lists_valid_names() -> None:
    with pytest.raises(ConcreteArgError, match=r"no argument 'run_all'.*x, run_all_layers"):
        execorder.trace(Model(), concrete_args={"run_all": True})


def test_control_flow_on_an_argument_names_it() -> None:
    with pytest.raises(
        TraceFailure, match=r"argument 'flag'; pin it with concrete_args=\{'flag': \.\.\.\}"
    ):
        execorder.trace(models.Branchy())


def test_control_flow_after_pinning_one_names_the_next() -> None:
    with pytest.raises(TraceFailure, match=r"computed from argument 'mode'"):
        execorder.trace(models.Branchy(), concrete_args={"flag": True})
    report = execorder.trace(models.Branchy(), concrete_args={"flag": False, "mode": "double"})
    assert [p.name for p in report.unused] == ["lin.weight", "lin.bias"]


def test_data_dependent_control_flow_explains_fx_limit() -> None:
    with pytest.raises(TraceFailure, match=r"computed from argument 'x'.*tensor values"):
        execorder.trace(models.DataDependent())


def test_iterating_a_traced_value_is_explained() -> None:
    with pytest.raises(TraceFailure, match=r"iterates over a traced value.*'\*x\.shape'"):
        execorder.trace(models.StarUnpack())


def test_trace_rejects_non_modules() -> None:
    with pytest.raises(TypeError, match=r"nn\.Module"):
        execorder.trace(lambda x: x)  # type: ignore[arg-type]


def test_a_decorated_forward_says_why_fx_cannot_trace_it() -> None:
    from execorder.errors import WrappedForwardError

    with pytest.raises(WrappedForwardError, match=r"wrapped by a decorator \(_logged\)"):
        execorder.trace(models.Decorated())
    report = execorder.profile(models.Decorated, input_size=(2, 4)).report
    assert report.mode == "eager" and dict(report.defaults) == {"scale": 2.0}


def test_forward_defaults_that_a_run_used_are_in_the_report() -> None:
    report = execorder.profile(models.Branchy, input_size=(2, 4)).report
    assert dict(report.defaults) == {"flag": True, "mode": "plain"}
    pinned = execorder.profile(models.Branchy, input_size=(2, 4), concrete_args={"flag": False})
    assert dict(pinned.report.defaults) == {"mode": "plain"}
    assert pinned.report.to_dict()["defaults"] == {"mode": "plain"}
    # FX leaves unpinned arguments symbolic: no default is used.
    fx = execorder.trace(models.Branchy(), concrete_args={"flag": True, "mode": "plain"})
    assert dict(fx.defaults) == {}


class _NeedsOutput(torch.autograd.Function):
    """A checkpoint whose ``setup_context`` reads the output: FX's dry run of it fails."""

    @staticmethod
    def forward(run_function, x):  # type: ignore[no-untyped-def, override]
        with torch.no_grad():
            return run_function(x)

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[no-untyped-def, override]
        ctx.run_function, ctx.shape = inputs[0], output.shape
        ctx.save_for_backward(inputs[1])

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def, override]
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            out = ctx.run_function(x)
        torch.autograd.backward(out, grad)
        return None, x.grad


class _NeedsOutputModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pre, self.block = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _NeedsOutput.apply(self.block, self.pre(x))


def test_a_setup_context_that_needs_the_output_leaves_the_block_taken_with_grad() -> None:
    """Where the dry run of ``setup_context`` cannot run, the block's ops are taken as the
    recompute makes them, with grad: every parameter here gets a gradient, as in a real
    backward."""
    torch.manual_seed(0)
    model = _NeedsOutputModel()
    model(torch.randn(2, 4)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    report = execorder.trace(_NeedsOutputModel())
    assert not report.no_grad() and [c.name for c in report.modules] == ["", "pre", "block"]
