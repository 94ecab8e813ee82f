"""Meta runs with real inputs: what the inputs decide is computed, the rest follows the policy.

Each model here reads values in one of the ways real models do. The answer on
meta must be the answer on CPU, or the run must say what it assumed (and
mark what rests on it), or refuse and name the op.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import execorder
from execorder import eager
from execorder.analysis import ChangeKind, diff_reports
from execorder.backends.meta import MetaRun, NeedsValues
from execorder.cli import app
from execorder.errors import MetaDeviceError
from execorder.profiling import NoteKind
from execorder.report import AssumptionKind, Report


def _on_meta(build: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    with torch.device("meta"):
        return build()


def _same_as_cpu(build: type[nn.Module], *args: torch.Tensor, **options: object) -> Report:
    """The report on meta (real inputs), checked equal to the report on CPU."""
    on_meta = eager.trace(_on_meta(build), args=args, backward=True, **options)  # type: ignore[arg-type]
    torch.manual_seed(0)
    on_cpu = eager.trace(build(), args=args, backward=True, **options)  # type: ignore[arg-type]
    assert on_meta.to_dict() == on_cpu.to_dict()
    return on_meta


# -- values the inputs alone decide are known -----------------------------------


class Positions(nn.Module):
    """Reads positions made with arange on the model's device, and a padding mask."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.extra = nn.Linear(4, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(ids)
        positions = torch.arange(ids.shape[1], device=hidden.device)
        mask = (ids != 0).to(hidden.device)  # moved to meta: its values go with it
        if positions[-1].item() == ids.shape[1] - 1 and not mask.all():
            hidden = self.extra(hidden)  # only with padding
        return hidden * mask[..., None]


def test_input_values_moved_to_the_model_device_stay_known() -> None:
    padded = _same_as_cpu(Positions, torch.tensor([[1, 2, 0]]))
    assert padded.param("extra.weight").used and padded.assumptions == ()
    full = _same_as_cpu(Positions, torch.tensor([[1, 2, 3]]))
    assert not full.param("extra.weight").used


class KnownMask(nn.Module):
    """Selects tokens by a mask made from the input: the count is known, no assumption."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(ids)
        chosen = hidden[ids == 3]  # data unknown, selection known
        if chosen.shape[0] == 0:
            return hidden.sum()
        return self.head(chosen).sum()


def test_a_selection_by_a_known_mask_is_exact() -> None:
    for ids, used in ((torch.tensor([[3, 1, 3]]), True), (torch.tensor([[1, 1, 2]]), False)):
        report = _same_as_cpu(KnownMask, ids)
        assert report.assumptions == () and report.param("head.weight").used is used


# -- values computed from parameters: refused, naming the op -------------------


class WrittenFromParameters(nn.Module):
    """Fills a tensor made from the input with parameter values, then branches on it."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.out = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        buffer = torch.zeros_like(x)  # known: zeros
        view = buffer[0]
        view.copy_(self.lin(x)[0])  # a write through a view: buffer is unknown now
        if buffer.sum() > 0:
            return self.out(buffer)
        return buffer


def test_a_tensor_written_with_parameter_values_through_a_view_is_unknown() -> None:
    with pytest.raises(MetaDeviceError, match=r"reading a value computed from parameters"):
        eager.trace(_on_meta(WrittenFromParameters), args=(torch.ones(2, 4),))


class MadeOnCpu(nn.Module):
    """Makes a CPU tensor itself (no device) and writes parameter values into it."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(4)
        total += self.lin(x).sum(0)
        return total


def test_writing_parameter_values_into_a_cpu_tensor_is_refused_not_faked() -> None:
    with pytest.raises(MetaDeviceError) as raised:
        eager.trace(_on_meta(MadeOnCpu), args=(torch.ones(2, 4),))
    assert "aten.add_.Tensor writes values computed from parameters into a tensor the model " in (
        str(raised.value)
    )
    result = execorder.profile(MadeOnCpu, input_size=(2, 4))
    assert [n.kind for n in result.notes] == [NoteKind.RERAN_ON_CPU]
    assert result.report.param("lin.weight").used


class ListsValues(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, read: str = "input") -> torch.Tensor:
        y = self.lin(x)
        source = x if read == "input" else y
        sizes = (source[:, 0] > -100).long().tolist()  # tolist bypasses dispatch
        return y * len(sizes)


def test_tolist_answers_for_known_values_and_is_a_value_read_for_unknown_ones() -> None:
    assert eager.trace(_on_meta(ListsValues), args=(torch.ones(2, 4),)).param("lin.weight").used
    with pytest.raises(MetaDeviceError, match=r"reading values computed from parameters "):
        eager.trace(_on_meta(ListsValues), args=(torch.ones(2, 4),), kwargs={"read": "output"})


def test_a_meta_output_over_the_limit_keeps_no_values() -> None:
    with MetaRun(limit=1000) as run:
        small = torch.arange(100, device="meta")
        big = torch.arange(1000, device="meta")
        assert small.is_meta and big.is_meta
        assert small[-1].item() == 99
        with pytest.raises(NeedsValues):
            big[-1].item()
    assert run.value(small) is not None and run.value(big) is None


def test_a_tensor_made_empty_has_no_values_until_it_is_filled_whole() -> None:
    weight = nn.Parameter(torch.empty(4, device="meta"))
    with MetaRun():
        blank = torch.empty(4, device="meta")
        with pytest.raises(NeedsValues):
            blank.sum().item()  # uninitialized memory is no value to know
        filled = torch.empty(4, device="meta").fill_(2)
        assert filled.sum().item() == 8
        copied = torch.empty(3, device="meta").copy_(torch.arange(3, device="meta"))
        assert copied.tolist() == [0, 1, 2]
        bigger = torch.empty(8, device="meta")
        part = bigger[:4]
        part.fill_(1)  # only part of its storage: the rest is unknown
        with pytest.raises(NeedsValues):
            part.sum().item()
        early = torch.empty(4, device="meta")
        view = early[:2]  # made before the fill, so without values of its own
        early.fill_(1)
        assert early.sum().item() == 4
        view.copy_(weight[:2] * 2)  # written through it: the whole storage is unknown again
        with pytest.raises(NeedsValues):
            early.sum().item()


def test_values_written_over_with_unknown_ones_are_freed() -> None:
    """A known tensor that parameters' values overwrite (an optimizer's zeroed state, a
    buffer filled then gathered into) holds no real memory after it: FSDP2 on meta makes
    thousands of them."""
    weight = nn.Parameter(torch.empty(1 << 20, device="meta"))
    with MetaRun() as run:
        state = torch.zeros(1 << 20, device="meta")
        view = state[: 1 << 10]
        shadow = run.value(state)
        assert shadow is not None and shadow.untyped_storage().nbytes() == 4 << 20
        state.copy_(weight)
        assert run.value(state) is None and run.value(view) is None
        assert shadow.untyped_storage().nbytes() == 0


# -- selections from parameter values: assumed, and said ------------------------


class Router(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate = nn.Linear(4, 3, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        best = self.gate(x).softmax(-1).max(-1)
        return best.indices, best.values


class Experts(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.each = nn.ModuleDict({f"expert_{i}": nn.Linear(4, 4) for i in range(3)})

    def forward(self, x: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        for index in torch.arange(len(self.each), device=x.device):  # 0-dim tensors, known
            tokens = (choice == index).nonzero()[:, 0]
            if tokens.numel() == 0:
                continue  # no token routed here: this expert gets no gradient
            out[tokens] = self.each[f"expert_{index}"](x[tokens])  # formats the known value
        return out


class Routed(nn.Module):
    """A router picks an expert per token: the experts used depend on parameter values."""

    def __init__(self) -> None:
        super().__init__()
        self.router = Router()
        self.experts = Experts()
        self.norm = nn.LayerNorm(4)

    def forward(self, x: torch.Tensor, route: bool = True) -> torch.Tensor:
        if not route:
            return self.norm(x)
        choice, weight = self.router(x)
        return self.norm(self.experts(x, choice) * weight[:, None])


def test_a_routing_is_assumed_to_keep_everything_and_the_report_says_what_rests_on_it() -> None:
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(1))
    report = eager.trace(_on_meta(Routed), args=(x,), backward=True)
    assert report.unused == () and report.dead == ()
    ops = {(a.op, a.module) for a in report.assumptions}
    assert ("aten.nonzero", "experts") in ops
    # The experts module made it: its parameters rest on it; the router and the
    # norm after it do not (the norm runs after the experts' call has ended).
    resting = {p.name for p in report.on_assumption}
    assert resting == {f"experts.each.expert_{i}.{k}" for i in range(3) for k in ("weight", "bias")}
    assert report.summary.params_on_assumption == 6
    # Whatever a real step routes, what it leaves without a gradient is marked.
    for seed in range(5):
        torch.manual_seed(seed)
        real = eager.trace(Routed(), args=(x,), backward=True)
        assert {p.name for p in real.no_grad()} <= resting
    # It survives JSON.
    again = Report.from_dict(json.loads(json.dumps(report.to_dict())))
    assert again == report and again.assumptions == report.assumptions


def test_a_diff_and_a_sweep_say_what_rests_on_an_assumption() -> None:
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(1))
    on_cpu = execorder.profile(Routed, inputs=(x,), device="cpu").report
    on_meta = execorder.profile(Routed, inputs=(x,)).report
    # The real run's routing is its values' (said so): the experts rest on it either way.
    assert [a.assumed for a in on_cpu.assumptions] == [AssumptionKind.COMPUTED]
    resting = {p.name for p in on_cpu.on_assumption}
    assert resting == {p.name for p in on_meta.on_assumption}
    assert "experts.each.expert_0.weight" in resting and "norm.weight" not in resting
    changes = {(c.name, c.what) for c in diff_reports(on_cpu, on_meta).params}
    assert not {what for _, what in changes} & {ChangeKind.ON_ASSUMPTION, ChangeKind.OFF_ASSUMPTION}
    unrouted = execorder.profile(Routed, inputs=(x,), concrete_args={"route": False}).report
    changes = {(c.name, c.what) for c in diff_reports(unrouted, on_meta).params}
    assert ("experts.each.expert_0.weight", ChangeKind.ON_ASSUMPTION) in changes
    assert not {name for name, what in changes if what is ChangeKind.ON_ASSUMPTION} & {
        "router.gate.weight",
        "norm.weight",
    }
    swept = execorder.Profiler(Routed, inputs=(x,)).sweep([("route", [True, False])])
    expert = next(p for p in swept.params if p.name == "experts.each.expert_0.weight")
    assert expert.assumed_in == (0,) and expert.used_in == (0,)
    assert "experts.each.expert_0.weight" in swept.findings("assumption")
    assert swept.to_dict()["findings"]["assumption"] == list(swept.findings("assumption"))


def test_without_assuming_a_routing_needs_values() -> None:
    x = torch.randn(2, 4)
    with pytest.raises(MetaDeviceError, match=r"aten.nonzero selects by values computed from"):
        eager.trace(_on_meta(Routed), args=(x,), assume=False)
    result = execorder.profile(Routed, inputs=(x,), assume=False)
    assert [n.kind for n in result.notes] == [NoteKind.RERAN_ON_CPU]
    assert result.device == "cpu"  # the routing is real, and made from values: said so
    assert [a.assumed for a in result.report.assumptions] == [AssumptionKind.COMPUTED]


def test_a_recorded_step_on_meta_assumes_and_says_so() -> None:
    model = _on_meta(Routed)
    with eager.record(model) as recording:
        loss = model(torch.randn(2, 4)).sum()
        loss.backward()
    report = recording.report()
    assert report.assumptions and report.backward is not None
    assert all(p.gets_gradient for p in report.all_params())


class GradientReader(torch.autograd.Function):
    """Its backward branches on the gradient's values."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        return x * 2

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        return grad * 2 if grad.sum() > 0 else grad


class ReadsInBackward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return GradientReader.apply(self.lin(x))  # type: ignore[no-any-return]


def test_a_backward_that_needs_values_on_meta_says_so_and_reruns_on_cpu() -> None:
    with pytest.raises(MetaDeviceError, match=r"in backward: reading a value computed from"):
        eager.trace(_on_meta(ReadsInBackward), args=(torch.ones(2, 4),), backward=True)
    result = execorder.profile(ReadsInBackward, input_size=(2, 4), backward=True)
    assert [n.kind for n in result.notes] == [NoteKind.RERAN_ON_CPU]
    assert "in backward: " in result.notes[0].reason


class CheckpointedAttention(nn.Module):
    """Attention blocks under non-reentrant activation checkpointing, a branch forward drops."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(32, 96) for _ in range(2))
        self.dropped = nn.Linear(32, 32)

    def _attend(self, qkv: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        q, k, v = qkv(x).view(x.shape[0], 16, 3, 4, 8).permute(2, 0, 3, 1, 4)
        out = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return out.transpose(1, 2).reshape(x.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.utils.checkpoint import checkpoint

        self.dropped(x)
        for qkv in self.blocks:
            x = x + checkpoint(self._attend, qkv, x, use_reentrant=False)
        return x


def test_a_checkpointed_attention_recomputes_on_meta_as_its_forward_ran() -> None:
    """Backward's recomputation takes forward's attention kernel on meta: it used to take the
    math path, torch's checkpoint refused the mismatch, and every checkpointed transformer
    (transformers', diffusers') reran on CPU, or was refused where CPU could not hold it."""
    result = execorder.profile(CheckpointedAttention, input_size=(2, 16, 32), backward=True)
    assert result.device == "meta" and result.notes == ()
    torch.manual_seed(0)
    model = CheckpointedAttention()
    model(torch.randn(2, 16, 32)).sum().backward()
    truth = {n for n, p in model.named_parameters() if p.grad is None}
    assert {p.name for p in result.report.no_grad()} == truth == {"dropped.weight", "dropped.bias"}


class Legacy(nn.Module):
    """Makes parameters with a legacy constructor, which ignores the meta device (as XLNet)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.FloatTensor(4, 4).normal_())
        self.lin = nn.Linear(4, 4)
        self.lin.weight = self.weight  # tied

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) @ self.weight


def test_parameters_a_constructor_made_on_cpu_are_moved_to_meta_tied() -> None:
    result = execorder.profile(Legacy, input_size=(2, 4), backward=True)
    assert result.device == "meta" and result.notes == ()
    report = result.report
    assert report.param("weight").aliases == ("lin.weight",)
    assert report.no_grad() == ()


def test_the_cli_marks_an_assumption_and_never_says_ok_on_it() -> None:
    runner = CliRunner()
    args = ["trace", f"{__file__}:Routed", "--input", "[2,4]"]
    shown = runner.invoke(app, [*args, "--max-rows", "0"], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    assert "assumed on meta" in shown.stdout and "on assumption" in shown.stdout
    words = " ".join(shown.stdout.split())
    assert "DDP check not proven: 6 trainable parameters rest on an assumption" in words
    assert "ok: every trainable parameter" not in shown.stdout
    data = json.loads(runner.invoke(app, [*args, "-f", "json"]).stdout)
    assert data["summary"]["params_on_assumption"] == 6
    assert data["assumptions"][0]["assumed"] == "every element is kept"
    gated = runner.invoke(app, [*args, "-f", "json", "--fail-on", "unused"])
    assert gated.exit_code == 1 and "check failed: assumption: 6" in gated.stderr
    # On CPU the routing is real, and still this run's: the gate fails on it as well.
    refused = runner.invoke(app, [*args, "-f", "json", "--no-assume", "--fail-on", "assumption"])
    assert refused.exit_code == 1, refused.output
    assert "reran it on CPU" in refused.stderr
    assert json.loads(refused.stdout)["assumptions"][0]["assumed"] == "this run's values"


class LayerDrop(nn.Module):
    """Skips each layer at random while training, as fairseq's LayerDrop does."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            if self.training and torch.rand([]) < 0.5:
                continue
            x = layer(x)
        return x


@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_a_random_structure_gives_the_same_answer_every_run_under_a_seed(device: str) -> None:
    def skipped(seed: int) -> tuple[str, ...]:
        report = execorder.profile(LayerDrop, input_size=(2, 4), device=device, seed=seed).report
        return tuple(p.name for p in report.unused)

    assert skipped(0) == skipped(0) == skipped(0)
    assert len({skipped(seed) for seed in range(6)}) > 1  # the seed is what decides


def test_a_meta_kernel_that_wants_bfloat16_runs_in_it_and_keeps_the_dtype() -> None:
    """transformers' fused experts call grouped_mm, whose meta kernel takes bfloat16 only."""
    x, w = torch.randn(8, 16), torch.randn(2, 16, 8)
    offsets = torch.tensor([3, 8], dtype=torch.int32)
    on_cpu = torch.nn.functional.grouped_mm(x, w, offs=offsets)
    meta = [t.to("meta") for t in (x, w, offsets)]
    with pytest.raises(RuntimeError, match="BF16"):
        torch.nn.functional.grouped_mm(meta[0], meta[1], offs=meta[2])
    with MetaRun() as run:
        out = torch.nn.functional.grouped_mm(meta[0], meta[1], offs=meta[2])
    assert (out.shape, out.dtype, out.is_meta) == (on_cpu.shape, on_cpu.dtype, True)
    assert run.lifted == {"aten._grouped_mm"}


# -- a run without values first: taken only when nothing tried to read one -----


class SwallowsARead(nn.Module):
    """Reads a value from its input, and takes another branch when the read fails."""

    def __init__(self) -> None:
        super().__init__()
        self.positive = nn.Linear(4, 4)
        self.other = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            positive = bool((x > 0).all())
        except (RuntimeError, NotImplementedError):
            positive = False  # a model's own fallback: on meta this read fails
        return self.positive(x) if positive else self.other(x)


class FormatsAValue(nn.Module):
    """Makes a key from a value its input decides (a repr on meta, silently)."""

    def __init__(self) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({"four": nn.Linear(4, 4), "other": nn.Linear(4, 4)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key = {"4.0": "four"}.get(f"{x.sum()}", "other")
        return self.heads[key](x)


class AddsIntoItsOwnTensor(nn.Module):
    """Adds an input-derived value into a CPU tensor it made (silent on plain meta)."""

    def __init__(self) -> None:
        super().__init__()
        self.big = nn.Linear(4, 4)
        self.small = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(())
        total += x.sum()
        return self.big(x) if total > 2 else self.small(x)


@pytest.mark.parametrize(
    ("build", "used"),
    [(SwallowsARead, "positive"), (FormatsAValue, "heads.four"), (AddsIntoItsOwnTensor, "big")],
)
def test_a_read_of_a_known_value_is_answered_even_when_plain_meta_would_miss_it(
    build: type[nn.Module], used: str
) -> None:
    x = torch.ones(1, 4)
    truth = eager.trace(build(), args=(x,))
    report = eager.trace(_on_meta(build), args=(x,))
    assert report.param(f"{used}.weight").used and truth.param(f"{used}.weight").used
    assert [c.name for c in report.modules] == [c.name for c in truth.modules]
