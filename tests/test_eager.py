"""The eager backend: same report as FX where both can see, ground truth, safety."""

from __future__ import annotations

import models
import pytest
import torch
from cases import CASES, Case, backward_no_grad, output_tensors, predict, unseen_backward_resting
from seed import Model
from torch import nn
from transformer import Transformer

import execorder
from execorder import eager
from execorder.errors import ConcreteArgError, ForwardError, TraceFailure
from execorder.recording import module_tree
from execorder.report import AssumptionKind


def _eager(case: Case, device: str, **options: object) -> execorder.Report:
    torch.manual_seed(0)
    with torch.device(device.removesuffix("-inputs")):
        model = case.build()
    # On meta, inputs stay real, as the profiler makes them ("meta-inputs": not even those).
    args = tuple(a.to("meta") if device == "meta-inputs" else a for a in case.inputs())
    return eager.trace(model, args=args, kwargs=case.concrete_args, **options)  # type: ignore[arg-type]


FX_CASES = {name: case for name, case in CASES.items() if case.fx}
EAGER_RUNS = [
    pytest.param(case, device, id=f"{name}-{device}")
    for name, case in CASES.items()
    for device in ("cpu", "meta")
    if case.meta or device == "cpu"
]


FX_RUNS = [
    pytest.param(case, device, id=f"{name}-{device}")
    for name, case in FX_CASES.items()
    for device in ("cpu", "meta", "meta-inputs")
    if case.meta or device == "cpu"
]


@pytest.mark.parametrize(("case", "device"), FX_RUNS)
def test_eager_agrees_with_fx(case: Case, device: str) -> None:
    fx = execorder.trace(case.build(), concrete_args=case.concrete_args)
    ours = _eager(case, device)
    assert ours.mode == "eager"
    assert [c.name for c in ours.modules] == [c.name for c in fx.modules]
    # Inside a leaf FX cannot see into, it assumes named_parameters() order;
    # eager observes the real one. Everything FX observed has the same order.
    assumed = {p.name for p in fx.params if p.assumed}
    assert [p.name for p in ours.params if p.name not in assumed] == [
        p.name for p in fx.params if p.name not in assumed
    ]
    assert {p.name for p in ours.params} == {p.name for p in fx.params}
    assert [p.name for p in ours.unused] == [p.name for p in fx.unused]
    assert [p.name for p in ours.dead] == [p.name for p in fx.dead]
    assert ours.output_reach == fx.output_reach
    assert ours.split_gradients == fx.split_gradients
    assert ours.recomputed_calls == fx.recomputed_calls
    assert ours.recompute_only == fx.recompute_only
    assert ours.own_checkpoints == fx.own_checkpoints
    unseen = AssumptionKind.BACKWARD  # what rests on a Function's backward, in both modes
    assert [a.op for a in ours.assumed(unseen)] == [a.op for a in fx.assumed(unseen)]


@pytest.mark.parametrize(("case", "device"), EAGER_RUNS)
def test_eager_no_grad_prediction_equals_a_real_backward(case: Case, device: str) -> None:
    """Exactly, but for what rests on a custom Function's unseen backward (and says so)."""
    report = _eager(case, device)
    resting = unseen_backward_resting(report)
    predicted = [p.name for p in report.no_grad() if p.name not in resting]
    assert predicted == [name for name in backward_no_grad(case) if name not in resting]


def test_eager_observes_what_fx_assumes() -> None:
    """FX treats torch.nn modules as leaves and assumes their parameters; eager sees them."""
    fx = execorder.trace(models.OpaqueLeaf())
    ours = _eager(CASES["opaque-leaf"], "meta")
    assert {p.name for p in fx.params if p.assumed} == {
        p.name for p in fx.params if "lstm" in p.name
    }
    assert not any(p.assumed for p in ours.params)


def test_eager_attributes_uses_to_the_module_that_runs_the_op() -> None:
    """FX attributes a parameter passed into a leaf to the caller; eager sees the leaf use it."""
    fx = execorder.trace(models.LeafArgParam())
    ours = _eager(CASES["leaf-arg"], "meta")
    assert fx.param("w").first_module == ""
    assert ours.param("w").first_module == "lin"


def test_eager_sees_uses_inside_leaves_that_break_fsdp_wrapping() -> None:
    """MultiheadAttention reads out_proj's weights without calling out_proj."""
    fx = execorder.trace(models.WithAttention())
    ours = _eager(CASES["attention"], "meta")
    assert fx.external == ()
    assert {(u.param, u.used_by) for u in ours.external} == {
        ("attn.out_proj.weight", "attn"),
        ("attn.out_proj.bias", "attn"),
    }


@pytest.mark.parametrize("seed", range(6))
def test_a_checkpoint_of_the_models_own_is_recomputed_under_forwards_random_state(
    seed: int,
) -> None:
    """Each block routes to a random expert; the real recompute replays forward's choice."""
    torch.manual_seed(seed)
    model, x = models.RandomRouteCheckpointed(), torch.randn(2, 4)
    state = torch.get_rng_state()
    model(x).sum().backward()
    truth = [n for n, p in model.named_parameters() if p.grad is None]
    torch.set_rng_state(state)
    report = eager.trace(model, args=(x,))
    assert [p.name for p in report.no_grad()] == truth
    assert 2 <= len(report.params) - 2 <= 4  # one or two experts ran, as many as forward picked


def test_backward_order_covers_exactly_the_parameters_with_gradients() -> None:
    report = _eager(CASES["transformer"], "meta", backward=True)
    assert report.backward is not None
    assert sorted(report.backward) == sorted(p.name for p in report.params if not p.dead)
    assert report.backward[0] == "head.weight"
    assert report.backward[-1] in {"embed.weight", "pos"}


def test_backward_order_on_cpu_matches_meta() -> None:
    on_meta = _eager(CASES["seed-all-layers"], "meta", backward=True)
    on_cpu = _eager(CASES["seed-all-layers"], "cpu", backward=True)
    assert on_meta.backward == on_cpu.backward
    assert set(on_cpu.backward or ()) == {"layer0.weight", "layer0.bias"}


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_bfloat16_report_equals_float32_report(device: str) -> None:
    """The GPU benchmark runs the Llama sample in bfloat16: same facts, bf16 dtypes."""
    case = CASES["llama"]
    reports = {}
    for dtype in (torch.float32, torch.bfloat16):
        with torch.device(device):
            model = case.build().to(dtype)
        args = tuple(a.to(device) for a in case.inputs())
        reports[dtype] = eager.trace(model, args=args, backward=True).to_dict()
    full, half = reports[torch.float32], reports[torch.bfloat16]
    for key in ("modules", "unused", "dead", "backward"):
        assert half[key] == full[key], key
    assert [p["name"] for p in half["params"]] == [p["name"] for p in full["params"]]
    assert {p["dtype"] for p in half["params"]} == {"bfloat16"}


def test_no_backward_means_no_order() -> None:
    assert _eager(CASES["seed-all-layers"], "meta").backward is None


def _patch_points() -> tuple[object, int, int]:
    hooks = nn.modules.module
    return (
        nn.Module.__call__,
        len(hooks._global_forward_pre_hooks),
        len(hooks._global_forward_hooks),
    )


def test_module_call_and_parameter_classes_are_restored_when_forward_raises() -> None:
    model = models.Raising()
    before = _patch_points()
    with pytest.raises(TraceFailure, match="boom in forward"):
        eager.trace(model, args=(torch.randn(2, 4),))
    assert _patch_points() == before
    assert all(type(p) is nn.Parameter for p in model.parameters())
    assert not any("_call_impl" in vars(m) for m in model.modules())


def test_parameter_classes_are_restored_after_a_run() -> None:
    model = Transformer(n_layers=1)
    before = _patch_points()
    eager.trace(model, args=(torch.zeros(1, 4, dtype=torch.long),), backward=True)
    assert all(type(p) is nn.Parameter for p in model.parameters())
    assert _patch_points() == before
    assert not any("_call_impl" in vars(m) for m in model.modules())


def test_a_value_of_real_inputs_is_known_on_meta() -> None:
    """The branch on x.sum() is taken as on CPU: inputs keep their values on meta."""
    for sign, expected in ((1, ["", "lin"]), (-1, [""])):
        with torch.device("meta"):
            model = models.DataDependent()
        report = eager.trace(model, args=(sign * torch.ones(2, 4),))
        assert [c.name for c in report.modules] == expected
        assert report.assumptions == ()
        on_cpu = eager.trace(models.DataDependent(), args=(sign * torch.ones(2, 4),))
        assert [c.name for c in on_cpu.modules] == expected


def test_a_value_computed_from_parameters_on_meta_raises_meta_device_error() -> None:
    with torch.device("meta"):
        model = models.ParamDependent()
    with pytest.raises(eager.MetaDeviceError) as raised:
        eager.trace(model, args=(torch.ones(2, 4),))
    text = str(raised.value)
    assert "reading a value computed from parameters (.item(), if tensor:" in text
    assert "(models.py:" in text and "use device='cpu'" in text
    # Inputs on meta hold no values either, and the message says so.
    with torch.device("meta"):
        model = models.DataDependent()
    with pytest.raises(eager.MetaDeviceError, match="computed from parameters and meta inputs"):
        eager.trace(model, args=(torch.randn(2, 4, device="meta"),))


def test_unknown_keyword_is_a_concrete_arg_error() -> None:
    with pytest.raises(ConcreteArgError, match="no argument 'y'; its arguments are: x"):
        eager.trace(models.DataDependent(), kwargs={"y": torch.ones(1)})


def test_inputs_are_described_in_the_report() -> None:
    report = eager.trace(Model(), args=(torch.randn(2, 6),), kwargs={"run_all_layers": True})
    assert dict(report.inputs) == {"arg0": "float32[2, 6]"}
    assert dict(report.concrete_args) == {"run_all_layers": True}


class _Fallback(nn.Module):
    """Calls a submodule that raises, catches it, then calls another."""

    def __init__(self) -> None:
        super().__init__()
        self.broken = models.Raising()
        self.backup = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            return self.broken(x)
        except ValueError:
            return self.backup(x)


def test_a_submodule_that_raises_inside_a_caught_call_still_ends_its_call() -> None:
    report = eager.trace(_Fallback(), args=(torch.randn(2, 4),))
    assert [(c.name, c.parent) for c in report.modules] == [
        ("", None),
        ("broken", 0),
        ("broken.lin", 1),
        ("backup", 0),  # not nested inside the call that raised
    ]
    assert [p.name for p in report.params] == [
        "broken.lin.weight",
        "broken.lin.bias",
        "backup.weight",
        "backup.bias",
    ]
    assert [p.name for p in report.params if p.dead] == ["broken.lin.weight", "broken.lin.bias"]


def test_forward_hooks_of_a_module_run_inside_its_call() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    scale = nn.Parameter(torch.ones(4))
    model[1].register_parameter("scale", scale)
    model[1].register_forward_pre_hook(lambda module, args: (args[0] * module.scale,))
    report = eager.trace(model, args=(torch.randn(2, 4),))
    assert report.param("1.scale").first_module == "1"
    assert [p.name for p in report.params][2] == "1.scale"  # before the layer's own weight


def test_gradient_hooks_are_removed_and_the_users_own_stay() -> None:
    model = Transformer(n_layers=1)
    seen: list[nn.Parameter] = []
    model.head.weight.register_post_accumulate_grad_hook(seen.append)
    eager.trace(model, args=(torch.zeros(1, 4, dtype=torch.long),), backward=True)
    assert seen == [model.head.weight]
    hooks = [p._post_accumulate_grad_hooks for p in model.parameters()]
    assert [len(h) for h in hooks if h] == [1]  # only the user's
    model(torch.zeros(1, 4, dtype=torch.long)).sum().backward()
    assert seen == [model.head.weight] * 2


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_module_tree_spans_are_each_modules_parameters(case: Case) -> None:
    model = case.build()
    tree = module_tree(model)
    assert tree.params == list(model.parameters())
    shared = len(list(model.named_parameters(remove_duplicate=False))) > len(tree.params) or len(
        list(model.named_modules(remove_duplicate=False))
    ) > len(tree.modules)
    assert (tree.spans == {}) == shared
    for module in model.modules():
        if tree.spans:
            start, end = tree.spans[id(module)]
            assert tree.params[start:end] == list(module.parameters())


def test_lazy_modules_are_initialized_then_recorded() -> None:
    model = nn.Sequential(nn.LazyLinear(4), nn.ReLU(), nn.Linear(4, 2))
    report = eager.trace(model, args=(torch.randn(2, 3),), backward=True)
    assert [p.name for p in report.params] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert report.param("0.weight").shape == (4, 3)
    assert type(model[0].weight) is nn.Parameter


class _Branches(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cond(x.sum() > 0, lambda t: self.a(t), lambda t: self.b(t), (x,))


def test_torch_cond_is_refused_not_answered_wrong() -> None:
    """Eager torch.cond runs its branches through torch.compile, out of the recording's sight:
    the output came back without history, and all four parameters were called dead (or
    unused), where a real backward gives both branches' parameters a gradient."""
    model, x = _Branches(), torch.ones(2, 4)
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())  # what a wrong answer missed
    original = torch.cond
    with pytest.raises(ForwardError, match=r"torch\.cond runs its body through torch\.compile"):
        eager.trace(_Branches(), args=(x,))
    assert torch.cond is original


@pytest.mark.parametrize("name", [n for n in CASES if "checkpoint" in n or n == "shared"])
def test_a_real_backward_finds_the_gradients_only_a_recompute_gives(name: str) -> None:
    """The caller's own backward, told apart from the recomputes' passes, gives what the walks
    give: the parameters DDP's search for unused ones does not see."""
    case = CASES[name]
    walked = predict(case)
    torch.manual_seed(0)
    model = case.build()
    with execorder.record(model) as recording:
        outputs = model(*case.inputs(), **case.concrete_args)
        sum(o.float().sum() for _, o in output_tensors(outputs) if o.requires_grad).backward()
    assert recording.report().recompute_only == walked.recompute_only


def test_two_backwards_of_the_caller_are_both_its_own_passes() -> None:
    """A second loss's backward (retain_graph) is the caller's too, not a recompute's: what
    only it reaches is not named as a recompute's alone."""
    model = models.TwoHeads()
    with execorder.record(model) as recording:
        main, aux = model(torch.randn(2, 4))
        main.sum().backward(retain_graph=True)
        aux.sum().backward()
    report = recording.report()
    assert report.recompute_only == () and not report.no_grad()
