"""What a training step holds, measured by execorder, against PyTorch's own measurements.

Each model takes two real training steps on CPU (forward, backward of the
summed outputs, the optimizer's step; the second step has the optimizer's
states), measured two ways that are not execorder's: PyTorch's
``MemTracker`` (``torch.distributed._tools.mem_tracker``; it refuses models
with frozen parameters, and sees the step through a dispatch mode, as
execorder does, where backward sums gradients out of place), and the CPU
allocator's own allocations and frees as ``torch.profiler`` records them
(``profile_memory=True``: the step as it runs, nothing else watching), on top
of what was allocated before (parameters, buffers, the batch). Its peak is
compared with execorder's, measured on CPU and on meta (where nothing is
allocated). The tolerance is PyTorch's own tracker tests' against the CUDA
allocator, 10%; where kernels allocate no workspace, to the byte.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable
from typing import Any

import models
import pytest
import torch
from conftest import Later, needs
from encdec import EncoderDecoder
from moe import MoE
from torch import nn
from torch.distributed._tools.mem_tracker import MemTracker
from torch.utils.checkpoint import checkpoint
from typer.testing import CliRunner

import execorder
from execorder.backends.memory import measure
from execorder.cli import app
from execorder.errors import NeedsArgError
from execorder.report import Report
from execorder.report.memory import MemoryKind, Phase

hf = Later("hf")
pytestmark = needs("transformers", "transformers is not installed (pip install execorder[hf])")
TOLERANCE = 0.10


class Checkpointed(nn.Module):
    """Blocks under activation checkpointing: their insides are recomputed in backward."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64)) for _ in range(3)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False)
        return x


class BiasedAttention(nn.Module):
    """Attention with a learned bias as its mask (as Swin's relative positions): the mask
    needs a gradient, so CPU takes the math path, not its flash kernel."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(32, 96)
        self.bias = nn.Parameter(torch.zeros(1, 4, 49, 49))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).view(x.shape[0], 49, 3, 4, 8).permute(2, 0, 3, 1, 4)
        return nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=self.bias)


class KeywordAttention(nn.Module):
    """Attention called with its tensors named (``query=``, ``key=``, ``value=``), as
    diffusers' attention dispatcher calls it: on meta too, the kernel CPU chooses (its flash
    kernel's own workspace, which the allocator records, is 7.5% of this step)."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(64, 192)
        self.out = nn.Linear(64, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).view(x.shape[0], 128, 3, 4, 16).permute(2, 0, 3, 1, 4)
        out = nn.functional.scaled_dot_product_attention(query=q, key=k, value=v)
        return self.out(out.transpose(1, 2).reshape(x.shape))


def _lora() -> nn.Module:
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    return peft.get_peft_model(hf.tiny_llama(tie=False), config)


def _checkpointed_llama() -> nn.Module:
    """transformers' own activation checkpointing: attention recomputed in backward."""
    model = hf.tiny_llama(layers=2)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model


def _ids(shape: tuple[int, int]) -> torch.Tensor:
    return torch.randint(0, 100, shape)


CASES = {
    "llama": (lambda: hf.tiny_llama(layers=2), lambda: (_ids((2, 64)),)),
    "llama-bf16": (lambda: hf.tiny_llama(layers=2).to(torch.bfloat16), lambda: (_ids((2, 64)),)),
    "encdec": (EncoderDecoder, lambda: (torch.randint(0, 100, (4, 32)),)),
    "moe": (MoE, lambda: (torch.randn(16, 16),)),
    "lora": (_lora, lambda: (_ids((2, 32)),)),
    "checkpointed": (Checkpointed, lambda: (torch.randn(32, 64),)),
    "llama-checkpointed": (_checkpointed_llama, lambda: (_ids((2, 64)),)),
    "biased-attention": (BiasedAttention, lambda: (torch.randn(2, 49, 32),)),
    "keyword-attention": (KeywordAttention, lambda: (torch.randn(2, 128, 64),)),
    "small-batch": (models.MlpBlocks, lambda: (torch.randn(2, 256),)),  # peaks in the step
}


def _built(
    case: str, optimizer: str, foreach: bool = False
) -> tuple[nn.Module, torch.optim.Optimizer, Any]:
    """The case's model, seeded, with torch's optimizer of that name, and its input maker."""
    build, make = CASES[case]
    torch.manual_seed(0)
    model = build()
    params = [p for p in model.parameters() if p.requires_grad]
    step = (
        torch.optim.AdamW(params, foreach=foreach)
        if optimizer == "adamw"
        else torch.optim.SGD(params, lr=0.01, momentum=0.9, foreach=foreach)
    )
    return model, step, make


def _tracked(case: str, optimizer: str, foreach: bool = False) -> int:
    """MemTracker's peak over two real training steps on CPU."""
    model, step, make = _built(case, optimizer, foreach)
    tracker = MemTracker()
    tracker.track_external(model, step)
    with tracker:
        torch.manual_seed(1)
        models.train_two_steps(model, make(), step, after=tracker.reset_mod_stats)
    return int(tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"])


def _allocated(case: str, optimizer: str, foreach: bool = False) -> int:
    """The CPU allocator's peak over two real training steps, as the profiler records it."""
    model, step, make = _built(case, optimizer, foreach)
    torch.manual_seed(1)
    args = make()
    held = (*model.parameters(), *model.buffers(), *args)
    return models.allocator_peak(held, lambda: models.train_two_steps(model, args, step))


def _ours(
    case: str, optimizer: str, device: str, foreach: bool = False
) -> execorder.report.memory.Memory:
    build, make = CASES[case]
    torch.manual_seed(0)
    with torch.device(device):
        model = build()
    torch.manual_seed(1)
    return measure(model, args=make(), optimizer=optimizer, foreach=foreach)


LOOPED = ("small-batch", "encdec", "lora")  # also stepped a parameter at a time


@pytest.mark.slow  # 24 runs of two real steps, each under three measures: 15 s in all
@pytest.mark.transformers
@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
@pytest.mark.parametrize(
    ("case", "foreach"),
    [(case, True) for case in CASES] + [(case, False) for case in LOOPED],
    ids=[*CASES, *(f"{case}-loop" for case in LOOPED)],
)
def test_the_peak_is_what_pytorch_measures_on_a_real_step(
    case: str, optimizer: str, foreach: bool
) -> None:
    """Each optimizer as torch steps it on CUDA (foreach), and for some models as on CPU
    (one parameter at a time), all run on CPU. To the byte, one of PyTorch's two measures:
    ``MemTracker``'s count of the same storages, or the allocator's record where the step
    differs under ``MemTracker``'s dispatch mode at the peak (the Llama's: the broadcast
    gradient of its summed logits, copied inside backward's first matmul; the mixture of
    experts' with SGD: ``max(dim)``'s backward, which scatters into its zeros in place)."""
    on_cpu = _ours(case, optimizer, "cpu", foreach)
    allocated = _allocated(case, optimizer, foreach)
    assert abs(on_cpu.peak_bytes - allocated) <= TOLERANCE * allocated
    if case != "lora":  # MemTracker refuses frozen parameters
        tracked = _tracked(case, optimizer, foreach)
        assert on_cpu.peak_bytes in (tracked, allocated)
    if case == "moe":
        return  # routing on values: see the next test
    on_meta = _ours(case, optimizer, "meta", foreach)
    assert on_meta.peak_bytes == on_cpu.peak_bytes
    assert on_meta.at_peak == on_cpu.at_peak and on_meta.peak_at == on_cpu.peak_at


def test_a_router_on_meta_is_assumed_and_says_so() -> None:
    on_meta = _ours("moe", "adamw", "meta")
    on_cpu = _ours("moe", "adamw", "cpu")
    assert on_meta.assumed and not on_cpu.assumed
    assert on_meta.peak_bytes >= on_cpu.peak_bytes  # every token to every expert: an upper bound


class Spike(nn.Module):
    """One call makes a large temporary that it frees before returning."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        big = x.new_zeros(1 << 20)
        return self.proj(x) + big[:1].sum()


class WithSpike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(8, 8)
        self.spike = Spike()
        self.last = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.spike(self.first(x)))


def test_the_peak_falls_in_the_call_that_makes_it() -> None:
    profile = execorder.profile(WithSpike, input_size=(2, 8), memory="sgd")
    memory, report = profile.report.memory, profile.report
    assert memory is not None and profile.device == "meta"
    assert memory.peak_at.phase is Phase.FORWARD
    assert report.modules[memory.peak_at.call].name == "spike"
    assert memory.at_peak[MemoryKind.TEMPORARIES] >= 4 << 20
    forward = [p.call for p in memory.timeline if p.phase is Phase.FORWARD and p.call is not None]
    assert list(dict.fromkeys(forward)) == list(range(len(report.modules)))  # the module order


class DeadWork(nn.Module):
    """Forward computes a result it throws away, through an op that saves its output."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(64, 64)
        self.waste = nn.Linear(64, 4096)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.exp(self.waste(x))  # exp saves its output for backward; nothing keeps it
        return self.proj(x)


def test_work_thrown_away_is_freed_at_once_as_in_a_real_step() -> None:
    """Saved tensors are not held in a cycle by the measure itself: exp's output, saved by
    a graph no backward reaches, goes when forward drops it (1 MB held to the end, before)."""
    torch.manual_seed(0)
    model = DeadWork()
    step = torch.optim.AdamW(model.parameters(), foreach=True)
    tracker = MemTracker()
    tracker.track_external(model, step)
    with tracker:
        models.train_two_steps(model, (torch.randn(64, 64),), step, after=tracker.reset_mod_stats)
    tracked = int(tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"])
    gc_was = gc.isenabled()
    gc.disable()  # as a collection may come at any moment, never during this measure
    try:
        for device in ("cpu", "meta"):
            with torch.device(device):
                built = DeadWork()
            ours = measure(built, args=(torch.randn(64, 64),), optimizer="adamw")
            assert ours.peak_bytes == tracked, device
    finally:
        if gc_was:
            gc.enable()


class SharedEmbedding(nn.Module):
    """One embedding read for two inputs: backward sums its two gradients."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(4096, 64)
        self.mix = nn.Linear(64, 64)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.mix(self.embed(a) + self.embed(b))


class TiedHead(nn.Module):
    """An embedding tied to the output head: the head's gradient of it comes as a view."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(4096, 64)
        self.mix = nn.Linear(64, 64)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.mix(self.embed(a)) @ self.embed.weight.t()


class _NoStep:
    """What ``optimizer="none"`` steps: gradients set to None, nothing else."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def step(self) -> None:
        pass

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.model.zero_grad(set_to_none=set_to_none)


def _as_allocated(build: Callable[[], nn.Module], args: tuple[torch.Tensor, ...]) -> None:
    """With no optimizer (backward is the peak): execorder's peak, on CPU and on meta, is the
    allocator's record of the same two steps run with nothing but the profiler watching."""
    torch.manual_seed(0)
    model = build()
    allocated = models.allocator_peak(
        (*model.parameters(), *args),
        lambda: models.train_two_steps(model, args, _NoStep(model)),
    )
    for device in ("cpu", "meta"):
        with torch.device(device):
            built = build()
        assert measure(built, args=args, optimizer="none").peak_bytes == allocated, device


@pytest.mark.parametrize(
    ("build", "inputs"), [(SharedEmbedding, 2), (TiedHead, 1)], ids=["shared", "tied"]
)
def test_gradients_the_engine_sums_count_as_it_sums_them(
    build: type[nn.Module], inputs: int
) -> None:
    """Backward sums two gradients of one tensor in place when it holds the only reference
    to the first, out of place when that is a view (the tied head's). Under a dispatch mode
    (``MemTracker``'s too) and on meta the engine always sums out of place; counted so, the
    shared embedding's peak was 1 MB over the allocator's, on CPU and on meta."""
    _as_allocated(build, tuple(torch.randint(0, 4096, (2, 8)) for _ in range(inputs)))


class Residual(nn.Module):
    """Linear blocks with a residual, on many rows: backward's first matmul is the peak."""

    def __init__(self) -> None:
        super().__init__()
        self.pre = nn.Linear(256, 256)
        self.up = nn.Linear(256, 256)
        self.down = nn.Linear(256, 256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(self.pre(x))
        return h + self.down(h)


def test_a_broadcast_gradient_is_copied_inside_the_matmul_as_in_a_real_step() -> None:
    """The summed output's gradient is one value broadcast (zero strides), which BLAS cannot
    read: the last Linear's backward copies it inside its kernel, as large as the output.
    Not counted, the peak was 3.9 MB (15%) under the allocator's, on CPU and on meta."""
    _as_allocated(Residual, (torch.randn(4096, 256),))


class MaxOwnBackward(torch.autograd.Function):
    """``max(dim=1)`` with a backward of its own that writes a copy of its zeros, as a user's
    may: both are alive at once in a real step too."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor) -> torch.Tensor:
        values, indices = h.max(dim=1)
        ctx.save_for_backward(indices)
        ctx.shape = h.shape
        return values

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (indices,) = ctx.saved_tensors
        return grad.new_zeros(ctx.shape).scatter(1, indices[:, None], grad[:, None])


PICKS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "max": lambda h, idx, mask: h.max(dim=1).values,  # backward: scatter
    "index": lambda h, idx, mask: h[idx[:8]],  # index_put
    "gather": lambda h, idx, mask: h.gather(1, idx[:, None]),  # scatter_add
    "index_select": lambda h, idx, mask: h.index_select(0, idx[:8]),  # index_add
    "masked_select": lambda h, idx, mask: h.masked_select(mask),  # masked_scatter
    "own-backward": lambda h, idx, mask: MaxOwnBackward.apply(h),  # out of place, for real
}


class Picking(nn.Module):
    """A few elements picked from a large activation: backward's formula fills zeros as
    large as it, while a larger gradient is held (``scale``'s, made first in backward), so
    that the peak falls there rather than in ``masked_select``'s kernel in forward (its
    workspace, 16 bytes an element of the mask, is not modelled)."""

    def __init__(self, pick: str) -> None:
        super().__init__()
        self.up = nn.Linear(16, 256)
        self.scale = nn.Parameter(torch.ones(1 << 21))
        self.pick = PICKS[pick]

    def forward(self, x: torch.Tensor, idx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        picked = self.pick(self.up(x), idx, mask)
        return picked.square().sum() * self.scale.sum()  # a gradient of its own: dense


@pytest.mark.parametrize("pick", PICKS)
def test_formulas_that_fill_zeros_count_as_they_fill_them(pick: str) -> None:
    """A backward formula writes into the zeros it made, in place, on a device; under a
    dispatch mode (``MemTracker``'s too) and on meta it writes a copy, as for a tensor
    subclass. Counted so, the peak was one activation (1 MB) over the allocator's. A
    ``torch.autograd.Function``'s own backward runs as written, in place or not."""
    rows = 1024
    torch.manual_seed(2)
    idx = torch.randint(0, 16, (rows,))
    mask = torch.rand(rows, 256) < 0.01
    _as_allocated(lambda: Picking(pick), (torch.randn(rows, 16), idx, mask))


def test_the_report_carries_it_and_reads_it_back() -> None:
    report = execorder.profile(
        EncoderDecoder, input_size="int64[2,16]@0:100", memory="adamw"
    ).report
    assert report.memory is not None and report.memory.optimizer == "adamw"
    again = Report.from_dict(json.loads(json.dumps(report.to_dict())))
    assert again.memory == report.memory
    data = report.to_dict()
    data["memory"]["timeline"][0]["phase"] = "warmup"
    with pytest.raises(execorder.errors.SchemaError, match=r"memory.timeline\[0\].phase: "):
        Report.from_dict(data)
    with pytest.raises(ValueError, match="memory must be one of"):
        execorder.profile(EncoderDecoder, input_size="int64[2,16]@0:100", memory="adam")


def test_a_sweep_does_not_measure_memory() -> None:
    """The memory is one run's training step: a sweep with it is refused, in Python as on
    the command line (``test_the_command_gates_on_a_budget``), before any combination runs."""
    from execorder.errors import SweepMemoryError

    profiler = execorder.Profiler(EncoderDecoder, input_size="int64[2,16]@0:100", memory="sgd")
    with pytest.raises(SweepMemoryError) as refused:
        profiler.sweep([("unused", [1, 2])])
    assert str(refused.value) == "memory measures one run's training step: not with sweep axes"


def test_a_budget_that_only_ddps_buckets_exceed_is_marked_and_not_gated() -> None:
    """The budget gates the one-device peak; where DDP's buckets alone take the step over it,
    the under-DDP row says so, and the exit code stays the one device's."""
    runner = CliRunner()
    target = ["trace", "sample_models/encdec.py:EncoderDecoder", "--input", "int64[2,16]@0:100"]
    data = json.loads(runner.invoke(app, [*target, "--memory", "-f", "json"]).stdout)["memory"]
    between = data["peak_bytes"] + data["ddp_buckets_bytes"] // 2
    marked = runner.invoke(app, [*target, "--memory", "--memory-budget", str(between)])
    assert marked.exit_code == 0, marked.stderr
    assert "over the budget: the peak and DDP's gradient buckets" in " ".join(marked.stdout.split())
    fits = runner.invoke(app, [*target, "--memory", "--memory-budget", "1GiB"])
    assert "over the budget" not in fits.stdout and "under DDP" in fits.stdout


def test_the_device_budget_is_none_off_cuda() -> None:
    """``memory_budget="device"``, the command line's default, reads a CUDA device's memory
    (``tests/test_cuda.py``); on CPU and meta there is none to read."""
    for device in ("cpu", "meta"):
        memory = execorder.profile(
            EncoderDecoder,
            input_size="int64[2,16]@0:100",
            device=device,
            memory="sgd",
            memory_budget="device",
        ).report.memory
        assert memory is not None and memory.budget_bytes is None and not memory.over_budget
    with pytest.raises(ValueError, match="bytes or 'device'"):
        execorder.profile(EncoderDecoder, input_size="int64[2,16]@0:100", memory_budget="gpu")
    with pytest.raises(NeedsArgError, match=r"^memory_budget needs memory$"):  # as --memory-budget
        execorder.profile(EncoderDecoder, input_size="int64[2,16]@0:100", memory_budget=1 << 30)


def test_the_command_gates_on_a_budget() -> None:
    runner = CliRunner()
    target = ["trace", "sample_models/encdec.py:EncoderDecoder", "--input", "int64[2,16]@0:100"]
    fits = runner.invoke(app, [*target, "--memory", "--memory-budget", "1GiB", "-f", "json"])
    assert fits.exit_code == 0, fits.stderr
    data = json.loads(fits.stdout)["memory"]
    assert data["budget_bytes"] == 1 << 30 and data["peak_at"]["unit"] is None
    over = runner.invoke(app, [*target, "--memory", "--memory-budget", "100KB"])
    assert over.exit_code == 1
    assert "execorder: check failed: memory: the peak" in over.stderr
    assert "exceeds the budget of 100.0 KB; largest: " in over.stderr
    assert "exceeded by" in over.stdout
    alone = runner.invoke(app, [*target, "--memory-budget", "1GiB"])
    assert alone.exit_code == 2 and "--memory-budget needs --memory" in alone.stderr
    for flag, name in (("--optimizer=sgd", "--optimizer"), ("--no-foreach", "--foreach")):
        unused = runner.invoke(app, [*target, flag])
        assert unused.exit_code == 2 and f"{name}" in unused.stderr
        assert "needs --memory" in unused.stderr
    wrong = runner.invoke(app, [*target, "--memory", "--memory-budget", "lots"])
    assert wrong.exit_code == 2 and "--memory-budget expects a size" in wrong.stderr
    swept = runner.invoke(app, [*target, "--memory", "--sweep", "x=1,2"])
    assert swept.exit_code == 2 and "not with --sweep" in swept.stderr
    fx = runner.invoke(app, ["trace", "sample_models/seed.py:Model", "--mode", "fx", "--memory"])
    assert fx.exit_code == 2 and "--memory needs --mode eager" in fx.stderr
    # A model traced with fx needs no inputs for its plan; its step does, and says so.
    for command in ("trace", "fsdp"):
        bare = runner.invoke(app, [command, "sample_models/llama.py:Llama", "--memory"])
        assert bare.exit_code == 2, bare.stderr
        assert "--memory runs forward for real: give its inputs with --input" in bare.stderr


def test_the_step_is_foreach_as_on_cuda_unless_told_otherwise() -> None:
    """--foreach (the default) and --no-foreach reach the step, and each is what PyTorch's
    MemTracker measures of torch's own optimizer run that way."""
    runner = CliRunner()
    target = ["trace", "tests/models.py:MlpBlocks", "--input", "float32[2,256]", "--memory"]
    peaks = {}
    for flag, foreach in (("--foreach", True), ("--no-foreach", False)):
        done = runner.invoke(app, [*target, flag, "-f", "json"])
        assert done.exit_code == 0, done.stderr
        memory = json.loads(done.stdout)["memory"]
        assert memory["foreach"] is foreach and memory["peak_at"]["phase"] == "optimizer"
        peaks[foreach] = memory["peak_bytes"]
        assert peaks[foreach] == _tracked("small-batch", "adamw", foreach)
    assert peaks[True] > peaks[False]  # a temporary as large as the parameters, at once
    default = runner.invoke(app, [*target, "-f", "json"])
    assert json.loads(default.stdout)["memory"]["peak_bytes"] == peaks[True]
    table = runner.invoke(app, [*target, "--no-foreach"])
    assert "adamw's step (a parameter at a time, as on CPU)" in table.stdout


def test_the_tree_and_the_timeline_show_it() -> None:
    from execorder.output.perfetto import timeline
    from execorder.output.terminal import draw, plain_text
    from execorder.output.views import tree_view

    report = execorder.profile(WithSpike, input_size=(2, 8), memory="sgd").report
    tree = plain_text(draw(tree_view(report)), width=200)
    assert "alive (the step's peak falls in its forward)" in tree
    spike_line = next(line for line in tree.splitlines() if "spike  Spike" in line)
    assert "the step's peak" in spike_line
    counters = [e for e in timeline(report)["traceEvents"] if e.get("ph") == "C"]
    assert counters and report.memory is not None
    assert [e["args"]["bytes"] for e in counters] == [p.bytes for p in report.memory.timeline]


# -- one FSDP2 rank, against FSDPMemTracker on real ranks -------------------------------

SHARDED = {
    "blocks@always": ("blocks", {"reshard_after_forward": "always"}),
    "blocks@default": ("blocks", {}),
    "blocks@never": ("blocks", {"reshard_after_forward": "never"}),
    "llama@titan-bf16": ("llama", {"layout": "torchtitan", "param_dtype": "bfloat16"}),
    "encdec@prefetch2": ("encdec", {"prefetch": 2}),
    "llama@checkpoint": ("llama", {}),
    "mixtral@default": ("mixtral", {}),
    "lora@default": ("lora", {}),
    "moe@default": ("moe", {}),
}
ASSUMED = {"moe@default"}  # routed on values: on meta every token goes to every expert


def _sharded_build(name: str) -> tuple[object, dict[str, object]]:
    if name == "blocks":
        return models.MlpBlocks, {"input_size": "float32[64,256]"}
    if name == "llama":
        return (lambda: hf.tiny_llama(layers=2, tie=False)), {"input_size": "int64[2,64]@0:100"}
    if name == "mixtral":
        return (lambda: hf.tiny_mixtral(layers=2)), {"input_size": "int64[2,32]@0:100"}
    if name == "lora":
        return _lora, {"input_size": "int64[2,32]@0:100"}
    if name == "moe":  # 128 tokens: every expert gets some, as FSDPMemTracker needs
        return MoE, {"input_size": "float32[128,16]"}
    return EncoderDecoder, {"input_size": "int64[4,32]@0:100"}


@pytest.mark.processes
@pytest.mark.transformers
@pytest.mark.parametrize("world", [2, 4])
def test_one_rank_under_a_plan_is_what_fsdpmemtracker_measures(
    world: int, tmp_path: pytest.TempPathFactory
) -> None:
    """FSDP2 on meta over a fake process group (execorder), against FSDP2 on real gloo
    ranks measured by PyTorch's FSDPMemTracker: the same plans, shards and steps.

    A mixture of experts that routes on values (``moe``) is assumed on meta to send
    every token to every expert, and says so: its peak is above the real one."""
    from pathlib import Path

    from conftest import run_probe

    import execorder.fsdp

    plans, ours = {}, {}
    for case, (name, options) in SHARDED.items():
        build, profile_options = _sharded_build(name)
        profiler = execorder.Profiler(build, **profile_options)
        plan, report = execorder.fsdp.plan_and_report(profiler, world_size=world, **options)
        plan = execorder.fsdp.plan_memory(
            profiler, plan, report, checkpointed=case.endswith("checkpoint")
        )
        assert plan.memory is not None and plan.memory.world_size == world
        assert plan.memory.assumed == (case in ASSUMED), case
        plans[case], ours[case] = plan.to_dict(), plan.memory.peak_bytes
    cases = Path(str(tmp_path)) / "cases.json"
    cases.write_text(json.dumps(plans))
    records = run_probe("fsdp_memory_probe.py", cases.parent / "store", cases, world)
    measured = {r["case"]: r["peak"] for r in records}
    assert set(measured) == set(SHARDED)
    for case, peak in measured.items():
        if case in ASSUMED:
            assert ours[case] > peak, (case, ours[case], peak)
        else:  # usually to the byte; the real run's own peak varies a little between runs
            assert abs(ours[case] - peak) <= TOLERANCE * peak, (case, ours[case], peak)


@pytest.mark.slow
def test_a_budget_on_a_plan_is_a_memory_check() -> None:
    import execorder.fsdp
    from execorder.analysis.sharding import CheckKind

    profiler = execorder.Profiler(models.MlpBlocks, input_size="float32[8,256]")
    plan, report = execorder.fsdp.plan_and_report(profiler, world_size=2)
    over = execorder.fsdp.plan_memory(profiler, plan, report, budget=1 << 20)
    assert over.memory is not None and over.memory.over_budget
    assert over.memory.at_peak[MemoryKind.GATHERED] > 0  # FSDP2's gathered parameters
    assert [c.kind for c in over.checks][:1] == [CheckKind.MEMORY]
    assert "over the budget of 1.0 MB" in over.checks[0].describe()
    assert over.failing(()) == over.checks[:1]  # a budget given is a gate of its own
    fits = execorder.fsdp.plan_memory(profiler, plan, report, budget=1 << 30)
    assert not any(c.kind is CheckKind.MEMORY for c in fits.checks) and not fits.failing(())
    again = execorder.fsdp.FsdpPlan.from_dict(json.loads(json.dumps(over.to_dict())))
    assert again.memory == over.memory


@pytest.mark.slow  # FSDP2 on meta over a fake process group: seconds
def test_fsdp2s_advice_for_the_users_own_step_is_not_shown_for_the_simulated_rank() -> None:
    """FSDP2 warns when a module returns a view (in-place ops on it would skip its hook);
    the user's step gets that warning from FSDP2 itself, the rank execorder runs does not."""
    import warnings

    import execorder.fsdp

    profiler = execorder.Profiler(EncoderDecoder, input_size="int64[2,16]@0:100")
    plan, report = execorder.fsdp.plan_and_report(profiler, world_size=2)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        execorder.fsdp.plan_memory(profiler, plan, report)
    assert not [w for w in shown if "FSDP2-wrapped module" in str(w.message)]


@pytest.mark.slow
def test_the_fsdp_command_fails_on_a_budget_as_the_plan_does() -> None:
    """Whatever ``--fail-on`` says, an exceeded budget fails the command, once: the plan's
    ``failing`` has it for any gate."""
    target = ["fsdp", "tests/models.py:MlpBlocks", "--input", "float32[8,256]", "-f", "json"]
    budget = ["--world-size", "2", "--memory", "--memory-budget"]
    for gate in ([], ["--fail-on", "error"]):
        result = CliRunner().invoke(app, [*target, *budget, "1MiB", *gate])
        assert result.exit_code == 1, result.stderr
        failed = [line for line in result.stderr.splitlines() if "check failed" in line]
        assert len(failed) == 1 and failed[0].startswith("execorder: check failed: memory: ")
    roomy = CliRunner().invoke(app, [*target, *budget, "1GiB", "--fail-on", "memory"])
    assert roomy.exit_code == 0, roomy.stderr


@pytest.mark.slow
@pytest.mark.transformers
@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_a_model_given_as_a_module_is_measured_on_a_meta_copy(device: str) -> None:
    """As the built one measures, tied weights and all, and the caller's model untouched."""
    import execorder.fsdp

    def tied() -> nn.Module:
        torch.manual_seed(0)
        return hf.tiny_llama(layers=2, tie=True)

    built = execorder.Profiler(tied, input_size="int64[2,32]@0:100")
    plan, report = execorder.fsdp.plan_and_report(built, world_size=2)
    expected = execorder.fsdp.plan_memory(built, plan, report).memory
    with torch.device(device):
        model = tied()
    before = {name: (p.device, p.clone()) for name, p in model.named_parameters()}
    given = execorder.Profiler(model, input_size="int64[2,32]@0:100")
    plan, report = execorder.fsdp.plan_and_report(given, world_size=2)
    measured = execorder.fsdp.plan_memory(given, plan, report).memory
    assert measured is not None and expected is not None
    assert measured.peak_bytes == expected.peak_bytes and measured.at_peak == expected.at_peak
    assert model.lm_head.weight is model.model.embed_tokens.weight
    for name, param in model.named_parameters():
        assert param.device == before[name][0] and not hasattr(param, "_local_tensor")
        if device == "cpu":
            assert torch.equal(param, before[name][1])


@pytest.mark.slow
def test_over_budget_each_change_is_measured_again() -> None:
    import dataclasses

    import execorder.fsdp
    from execorder.report.memory import Choice

    profiler = execorder.Profiler(models.MlpBlocks, input_size="float32[64,256]")
    plan, report = execorder.fsdp.plan_and_report(profiler, world_size=2, prefetch=2)
    over = execorder.fsdp.plan_memory(profiler, plan, report, budget=16_000_000)
    assert over.memory is not None
    found = {a.choice: a for a in over.memory.alternatives}
    assert set(found) == set(Choice) - {Choice.ALL}  # twice the ranks fits: not all together
    assert found[Choice.MORE_RANKS].peak_bytes <= 16_000_000
    wider = execorder.fsdp.plan_memory(profiler, dataclasses.replace(plan, world_size=4), report)
    assert wider.memory is not None
    assert found[Choice.MORE_RANKS].peak_bytes == wider.memory.peak_bytes < over.memory.peak_bytes
    assert found[Choice.MORE_RANKS].world_size == 4
    kept = execorder.fsdp.plan_memory(profiler, plan, report, checkpointed=True)
    assert kept.memory is not None
    assert found[Choice.CHECKPOINT].peak_bytes == kept.memory.peak_bytes
    assert kept.memory.at_peak[MemoryKind.ACTIVATIONS] < over.memory.at_peak[MemoryKind.ACTIVATIONS]
    fits = execorder.fsdp.plan_memory(profiler, plan, report, budget=1 << 30)
    assert fits.memory is not None and not fits.memory.alternatives


@pytest.mark.slow
def test_when_no_change_fits_alone_all_of_them_are_measured_together() -> None:
    import dataclasses

    import execorder.fsdp
    from execorder.report.memory import Choice

    profiler = execorder.Profiler(models.MlpBlocks, input_size="float32[64,256]")
    plan, report = execorder.fsdp.plan_and_report(
        profiler, world_size=2, prefetch=2, reshard_after_forward="never"
    )
    over = execorder.fsdp.plan_memory(profiler, plan, report, budget=1 << 20)
    assert over.memory is not None
    found = {a.choice: a for a in over.memory.alternatives}
    assert list(found) == list(Choice)
    assert all(a.peak_bytes > 1 << 20 for a in found.values())
    ranks = found[Choice.MORE_RANKS]
    assert ranks.world_size == 16  # doubled three times, each lower, none fitting
    wide = execorder.fsdp.plan_memory(profiler, dataclasses.replace(plan, world_size=16), report)
    assert wide.memory is not None and wide.memory.peak_bytes == ranks.peak_bytes
    units = tuple(dataclasses.replace(u, reshard_after_forward=u.name != "") for u in plan.units)
    combined = dataclasses.replace(
        plan,
        world_size=16,
        prefetch=1,
        forward_prefetch={u: t[:1] for u, t in plan.forward_prefetch.items()},
        backward_prefetch={u: t[:1] for u, t in plan.backward_prefetch.items()},
        units=units,
    )
    direct = execorder.fsdp.plan_memory(profiler, combined, report, checkpointed=True).memory
    assert direct is not None
    assert found[Choice.ALL].peak_bytes == direct.peak_bytes
    assert found[Choice.ALL].world_size == 16
    assert direct.peak_bytes < min(a.peak_bytes for c, a in found.items() if c is not Choice.ALL)


@pytest.mark.processes
@pytest.mark.transformers
def test_a_ddp_replica_holds_the_peak_and_the_buckets_execorder_names(tmp_path: Any) -> None:
    """Real DDP on 2 gloo ranks, measured by PyTorch's MemTracker: DDP's peak is the plain
    step's plus exactly the buckets execorder names, for a model with a tied embedding (its
    bytes once) and one without."""
    from conftest import run_probe

    records = {r["case"]: r for r in run_probe("ddp_memory_probe.py", tmp_path / "store")}
    builds = {
        "llama": (lambda: hf.tiny_llama(layers=2, tie=True), "int64[2,32]@0:100"),
        "encdec": (EncoderDecoder, "int64[4,32]@0:100"),
    }
    assert set(records) == set(builds)
    for case, (build, size) in builds.items():
        memory = execorder.profile(build, input_size=size, memory="adamw").report.memory
        assert memory is not None and memory.ddp_buckets_bytes
        # parameters() gives a tied weight once, as DDP's buckets hold it
        assert memory.ddp_buckets_bytes == sum(p.nbytes for p in build().parameters())
        added = records[case]["ddp"] - records[case]["plain"]
        assert added == memory.ddp_buckets_bytes, (case, records[case], memory.ddp_buckets_bytes)
        assert memory.ddp_peak_bytes == memory.peak_bytes + added


def test_a_rank_whose_forward_reads_its_inputs_values_is_measured_as_one_device_is() -> None:
    """On meta the inputs are real (on CPU), as in a run on one device: what forward reads of
    them (transformers' padding check) is known. Before, the rank's step made them on meta and
    was refused (four transformers models of bench_fsdp.py: RoFormer, XLM among them)."""
    import execorder.fsdp

    profiler = execorder.Profiler(models.ReadsItsInput, input_size="float32[8,4]", memory="adamw")
    plan, report = execorder.fsdp.plan_and_report(profiler, world_size=2)
    ranked = execorder.fsdp.plan_memory(profiler, plan, report).memory
    single = profiler.run({}).report.memory
    assert ranked is not None and single is not None and not ranked.assumed
    assert 0 < ranked.peak_bytes < single.peak_bytes  # one rank holds half the states


def test_measuring_a_rank_leaves_the_processs_tracebacks_as_they_were() -> None:
    """torch prefixes a process's tracebacks with its rank once it joins a group, and leaving
    does not undo it: after three measures every later traceback read "[rank0]: [rank0]:
    [rank0]: ..."."""
    import sys

    import execorder.fsdp

    hook = sys.excepthook
    profiler = execorder.Profiler(models.MlpBlocks, input_size="float32[8,256]")
    plan, report = execorder.fsdp.plan_and_report(profiler, world_size=2)
    assert execorder.fsdp.plan_memory(profiler, plan, report).memory is not None
    assert sys.excepthook is hook


def test_a_torch_whose_fsdp2_is_laid_out_otherwise_is_refused_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import execorder.fsdp
    from execorder.backends import fsdp_meta
    from execorder.errors import PlanMemoryError

    profiler = execorder.Profiler(models.MlpBlocks, input_size="float32[8,256]")
    plan, report = execorder.fsdp.plan_and_report(profiler, world_size=2)
    monkeypatch.setattr(fsdp_meta, "_PACKAGES", ("torch.no_such_fsdp",))
    with pytest.raises(PlanMemoryError, match="has no FSDP2 that runs on meta"):
        execorder.fsdp.plan_memory(profiler, plan, report)
    monkeypatch.undo()
    assert execorder.fsdp.plan_memory(profiler, plan, report).memory is not None


def test_a_module_that_cannot_be_copied_is_refused_with_the_reason() -> None:
    import threading

    import execorder.fsdp

    model = models.MlpBlocks()
    model.lock = threading.Lock()  # type: ignore[assignment]  # what deepcopy cannot copy
    given = execorder.Profiler(model, input_size="float32[8,256]")
    plan, report = execorder.fsdp.plan_and_report(given, world_size=2)
    with pytest.raises(execorder.errors.TargetError, match="MlpBlocks cannot be copied onto meta"):
        execorder.fsdp.plan_memory(given, plan, report)
