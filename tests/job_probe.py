"""``execorder.record()`` inside real jobs: FSDP2, DDP, torch.compile, checkpointing, TP, trainers.

Run by tests/test_inside_job.py under torchrun, 2 gloo ranks on CPU. Every
rank prints one JSON line per check (one write a line, so ranks' lines never
run together):

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/job_probe.py wrappers
    ... job_probe.py compare      # a per-rank branch, wrapped and plain
    ... job_probe.py trainers     # transformers' Trainer and Lightning under DDP

``wrappers``: for each model and wrapper, the report of a recorded step
against the plain model's report, field by field (``equal``: the first
difference, or null), and against the real thing (``truth``: the plain
model's calls seen by forward pre-hooks and the parameters a real backward
gave a gradient, against the wrapped report's; and under FSDP2 the
parameters whose sharded gradient FSDP2 set, against the report's).
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore")
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parent / "sample_models")]

import models  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from compiled_steps import as_eager  # noqa: E402
from seed import Model  # noqa: E402
from tied import TiedLM  # noqa: E402
from torch import nn  # noqa: E402
from torch.distributed._composable.replicate import replicate  # noqa: E402
from torch.distributed._composable.replicate_with_fsdp import (  # noqa: E402
    replicate as replicate_fsdp,
)
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (  # noqa: E402
    checkpoint_wrapper,
)
from torch.distributed.device_mesh import init_device_mesh  # noqa: E402
from torch.distributed.fsdp import (  # noqa: E402
    CPUOffloadPolicy,
    MixedPrecisionPolicy,
    fully_shard,
)
from torch.distributed.tensor.parallel import (  # noqa: E402
    ColwiseParallel,
    RowwiseParallel,
    parallelize_module,
)
from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: E402

import execorder  # noqa: E402
import execorder.ranks  # noqa: E402
from execorder.errors import RecordingError  # noqa: E402

RANK = 0


def emit(**line: Any) -> None:
    os.write(1, (json.dumps({"rank": RANK, **line}) + "\n").encode())


def first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """Where two JSON values first differ, as a path; None when equal."""
    if type(a) is not type(b):
        return f"{path}: {a!r} != {b!r}"
    if isinstance(a, dict):
        for key in list(dict.fromkeys([*a, *b])):
            found = first_difference(a.get(key), b.get(key), f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} items != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = first_difference(x, y, f"{path}[{i}]")
            if found:
                return found
        return None
    return None if a == b else f"{path}: {a!r} != {b!r}"


# -- models -------------------------------------------------------------------


def tiny_llama() -> nn.Module:
    from hf import tiny_llama as build

    return build(layers=2, tie=True)


def checkpointed_llama() -> nn.Module:
    """transformers' own gradient checkpointing: torch.utils.checkpoint inside each block."""
    model = tiny_llama()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def frozen_block_llama() -> nn.Module:
    model = tiny_llama()
    model.model.layers[0].requires_grad_(False)
    return model


def lora() -> nn.Module:
    from peft import LoraConfig, get_peft_model

    return get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))


def ids(vocab: int = 128) -> dict[str, Any]:
    g = torch.Generator().manual_seed(1)
    return {"input_ids": torch.randint(0, vocab, (2, 6), generator=g)}


def x(*shape: int) -> Callable[[], dict[str, Any]]:
    return lambda: {"x": torch.randn(*shape, generator=torch.Generator().manual_seed(1))}


def loss(out: Any) -> torch.Tensor:
    return (out.logits if hasattr(out, "logits") else out).float().sum()


def blocks_of(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks FSDP2 and checkpointing wrap, by model."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if hasattr(inner, "model") and hasattr(inner.model, "layers"):
        return list(inner.model.layers)
    if isinstance(inner, Model):
        return [inner.layer0, inner.layer2]
    if isinstance(inner, TiedLM):
        return [inner.body]
    if isinstance(inner, models.Frozen):
        return [inner.mid, inner.head, inner.aux]
    return list(inner.layers)


MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[], dict[str, Any]]]] = {
    "seed": (Model, lambda: {**x(2, 6)(), "run_all_layers": True}),
    "llama": (tiny_llama, ids),
    "llama-checkpointed": (checkpointed_llama, ids),
    "llama-frozen-block": (frozen_block_llama, ids),
    "lora": (lora, ids),
    "frozen": (models.Frozen, x(2, 4)),
    "tied": (TiedLM, lambda: ids(32)),
    "reads-another-unit": (models.ReadsAnotherUnit, x(2, 4)),
}


# -- wrappers: each takes the model and gives what the loop calls -------------


def shard_blocks(model: nn.Module, **options: Any) -> nn.Module:
    """fully_shard each block, then the root, all with ``options``."""
    for block in blocks_of(model):
        fully_shard(block, **options)
    fully_shard(model, **options)
    return model


def fsdp(reshard: bool = True, nested: bool = False) -> Callable[[nn.Module], nn.Module]:
    def wrap(model: nn.Module) -> nn.Module:
        for block in blocks_of(model) if nested else ():
            fully_shard(block.mlp, reshard_after_forward=reshard)
        return shard_blocks(model, reshard_after_forward=reshard)

    return wrap


def checkpointed_fsdp(model: nn.Module) -> nn.Module:
    """As torchtitan does: checkpoint_wrapper each block, then fully_shard it, then the root."""
    layers = model.model.layers
    for i, block in enumerate(list(layers)):
        wrapped = checkpoint_wrapper(block)
        layers.register_module(str(i), wrapped)
        fully_shard(wrapped)
    fully_shard(model)
    return model


def compiled_blocks_fsdp(model: nn.Module) -> nn.Module:
    """As torchtitan does: compile each block, then fully_shard it, then the root."""
    for block in blocks_of(model):
        block.compile(backend="aot_eager")
        fully_shard(block)
    fully_shard(model)
    return model


def mixed_precision_fsdp(model: nn.Module) -> nn.Module:
    """FSDP2 gathering and computing in bfloat16, reducing in float32 (torchtitan's default)."""
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return shard_blocks(model, mp_policy=policy)


def offloaded_fsdp(model: nn.Module) -> nn.Module:
    """FSDP2 keeping the sharded parameters on CPU (unpinned: pinning needs a GPU)."""
    return shard_blocks(model, offload_policy=CPUOffloadPolicy(pin_memory=False))


def compiled_fsdp(model: nn.Module) -> nn.Module:
    """The whole sharded model compiled, around FSDP2's hooks."""
    return torch.compile(fsdp()(model), backend="aot_eager")


def fsdp_tp(model: nn.Module) -> nn.Module:
    """2-D: tensor parallelism over one mesh dimension, FSDP2 over the other (torchtitan's)."""
    mesh = init_device_mesh("cpu", (1, dist.get_world_size()), mesh_dim_names=("dp", "tp"))
    tensor_parallel(model, mesh["tp"])
    return shard_blocks(model, mesh=mesh["dp"])


def hsdp(model: nn.Module) -> nn.Module:
    """FSDP2 over a 2-D mesh: replicated across the ranks, sharded within one (torchtitan's
    dp_replicate with dp_shard)."""
    mesh = init_device_mesh("cpu", (dist.get_world_size(), 1), mesh_dim_names=("rep", "shard"))
    return shard_blocks(model, mesh=mesh)


def replicated_fsdp(model: nn.Module) -> nn.Module:
    """torch's replicate built on FSDP2 (replicate_with_fsdp), per block and the root."""
    for block in blocks_of(model):
        replicate_fsdp(block)
    replicate_fsdp(model)
    return model


def tensor_parallel(model: nn.Module, mesh: Any = None) -> nn.Module:
    mesh = mesh or init_device_mesh("cpu", (dist.get_world_size(),))
    plan = {
        "self_attn.q_proj": ColwiseParallel(),
        "self_attn.k_proj": ColwiseParallel(),
        "self_attn.v_proj": ColwiseParallel(),
        "self_attn.o_proj": RowwiseParallel(),
        "mlp.gate_proj": ColwiseParallel(),
        "mlp.up_proj": ColwiseParallel(),
        "mlp.down_proj": RowwiseParallel(),
    }
    for block in blocks_of(model):
        parallelize_module(block, mesh, plan)
    return model


WRAPPERS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "fsdp": fsdp(),
    "fsdp-keep": fsdp(reshard=False),
    "fsdp-nested": fsdp(nested=True),
    "checkpoint-fsdp": checkpointed_fsdp,
    "compile-blocks-fsdp": compiled_blocks_fsdp,
    "tp": tensor_parallel,
    "ddp": lambda m: DDP(m, find_unused_parameters=True),
    "compile-ddp": lambda m: torch.compile(
        DDP(m, find_unused_parameters=True), backend="aot_eager"
    ),
    # torch's composable DDP, torchtitan's: hooks on the model; its DDP made in the first call
    "replicate": lambda m: replicate(m, find_unused_parameters=True),
    # its namesake built on FSDP2, whose state has the same class name
    "replicate-fsdp": replicated_fsdp,
    "hsdp": hsdp,
    "fsdp-bf16": mixed_precision_fsdp,
    "fsdp-offload": offloaded_fsdp,
    "compile-fsdp": compiled_fsdp,
    "fsdp-tp": fsdp_tp,
}

# (model, wrapper, what record() is given: the wrapper or the model inside it, backward)
MATRIX = [
    ("seed", "fsdp", "wrapper", True),
    ("seed", "fsdp-keep", "wrapper", True),
    ("seed", "ddp", "wrapper", True),
    ("seed", "ddp", "model", True),
    ("seed", "compile-ddp", "wrapper", True),
    ("llama", "fsdp", "wrapper", True),
    ("llama", "fsdp", "wrapper", False),
    ("llama", "fsdp-keep", "wrapper", True),
    ("llama", "fsdp-nested", "wrapper", True),
    ("llama", "checkpoint-fsdp", "wrapper", True),
    ("llama", "compile-blocks-fsdp", "wrapper", True),
    ("llama", "tp", "wrapper", True),
    ("llama", "ddp", "wrapper", True),
    ("llama-checkpointed", "fsdp", "wrapper", True),
    ("llama-checkpointed", "ddp", "wrapper", True),
    ("llama-frozen-block", "fsdp", "wrapper", True),
    ("lora", "fsdp", "wrapper", True),
    ("lora", "ddp", "model", True),
    ("frozen", "fsdp", "wrapper", True),
    ("frozen", "ddp", "wrapper", True),
    ("tied", "fsdp", "wrapper", True),
    ("reads-another-unit", "fsdp-keep", "wrapper", True),
    ("seed", "replicate", "wrapper", True),
    ("llama", "replicate", "wrapper", True),
    ("frozen", "replicate", "wrapper", True),
    ("seed", "replicate-fsdp", "wrapper", True),
    ("llama", "replicate-fsdp", "wrapper", True),
    ("frozen", "replicate-fsdp", "wrapper", True),
    ("llama", "hsdp", "wrapper", True),
    ("llama", "fsdp-bf16", "wrapper", True),
    ("lora", "fsdp-bf16", "wrapper", True),
    ("llama-checkpointed", "fsdp-offload", "wrapper", True),
    ("frozen", "fsdp-offload", "wrapper", True),
    ("llama", "compile-fsdp", "wrapper", True),
    ("seed", "compile-fsdp", "wrapper", True),
    ("llama", "fsdp-tp", "wrapper", True),
]


def built(name: str) -> nn.Module:
    torch.manual_seed(0)
    return MODELS[name][0]()


def recorded(model: nn.Module, call: nn.Module, inputs: dict[str, Any], backward: bool) -> Any:
    with execorder.record(model) as recording:
        out = call(**inputs)
        if backward:
            loss(out).backward()
    return recording


def truth(name: str, backward: bool) -> tuple[list[str], set[str]]:
    """The plain model's calls (forward pre-hooks) and what a real backward gives a gradient."""
    model = built(name)
    names = {id(m): n for n, m in model.named_modules()}
    calls: list[str] = []
    for module in model.modules():
        module.register_forward_pre_hook(lambda m, _: calls.append(names[id(m)]))
    out = model(**MODELS[name][1]())
    forward = list(calls)  # checkpointing's recompute in backward calls the hooks again
    if backward:
        loss(out).backward()
    graded = {n for n, p in model.named_parameters() if p.grad is not None}
    return forward, graded


def wrappers_mode() -> None:
    plain: dict[tuple[str, bool], dict[str, Any]] = {}
    for model_name, wrapper, given, backward in MATRIX:
        case = f"{model_name}/{wrapper}/{given}" + ("" if backward else "/forward-only")
        make_inputs = MODELS[model_name][1]
        if (model_name, backward) not in plain:
            model = built(model_name)
            rec = recorded(model, model, make_inputs(), backward)
            plain[model_name, backward] = rec.report(target=model_name).to_dict()
        model = built(model_name)
        call = WRAPPERS[wrapper](model)
        target = call if given == "wrapper" else model
        try:
            recording = recorded(target, call, make_inputs(), backward)
            report = recording.report(target=model_name)
        except Exception as exc:
            emit(case=case, error=f"{type(exc).__name__}: {exc}"[:500])
            continue
        calls, graded = truth(model_name, backward)
        mismatch = []
        if [c.name for c in report.modules] != calls:
            mismatch.append(f"calls {[c.name for c in report.modules]} != {calls}")
        if backward:
            gets = {p.name for p in report.all_params() if p.gets_gradient}
            if gets != graded:
                mismatch.append(f"gradients {sorted(gets)} != {sorted(graded)}")
            if "fsdp" in wrapper or wrapper == "hsdp":
                # FSDP2's own sharded gradients, on the wrapped model itself.
                sharded = {
                    n.replace("_checkpoint_wrapped_module.", "")
                    for n, p in model.named_parameters()
                    if p.grad is not None
                }
                if sharded != gets:
                    mismatch.append(f"FSDP2 gradients {sorted(sharded)} != {sorted(gets)}")
        emit(
            case=case,
            equal=first_difference(plain[model_name, backward], as_eager(report.to_dict())),
            truth="; ".join(mismatch) or None,
            used=report.summary.params_used,
            external=[e.param for e in report.external],
            ddp=None if recording.ddp is None else list(recording.ddp),
        )
    ddp_settings()
    refusals()
    compiled_ddp_jobs()
    changed_after_wrapping()
    unread_outputs()
    several_backwards()
    static_graph_later()
    static_graph_earlier()
    accumulation()
    healthy_ddp_jobs()
    fsdp_gradients_apart()
    ddps_inside()
    sink_inside()
    passes_none()
    recorded_memory()


# (model, its inputs): parameters read with no gradient path, which a compiled graph holds
COMPILED_JOBS = {
    "distill": (models.Distill, x(2, 16)),  # a trainable teacher under no_grad
    "distill-dataclass": (models.DistillToDataclass, x(2, 16)),  # its loss in a dataclass
    "detached": (lambda: Detached(), x(2, 4)),  # a side branch detached into the output
    "seed": (Model, lambda: {**x(2, 6)(), "run_all_layers": True}),  # results discarded
}


def summed(out: Any) -> torch.Tensor:
    """A compiled job's loss: its output summed, or the loss of a dataclass of outputs."""
    return (out.loss if isinstance(out, models.DistillOutput) else out).float().sum()


def compiled_ddp_jobs() -> None:
    """Four steps of a compiled job under DDP(find_unused_parameters=False), the second
    recorded, against the same job unrecorded: where each fails (if it does) and the
    gradients of the second step."""
    for name, (make, inputs) in COMPILED_JOBS.items():
        for how in ("ddp-compile", "compile-ddp"):
            torch._dynamo.reset()
            outcomes = {}
            for recording in (False, True):
                torch.manual_seed(0)
                model = make()
                if how == "ddp-compile":
                    job = DDP(torch.compile(model, backend="aot_eager"))
                else:
                    job = torch.compile(DDP(model), backend="aot_eager")
                failed, grads, report = None, None, None
                for step in range(4):
                    for param in model.parameters():
                        param.grad = None
                    try:
                        if recording and step == 1:
                            with execorder.record(job) as watched:
                                summed(job(**inputs())).backward()
                            report = watched.report()
                        else:
                            summed(job(**inputs())).backward()
                    except RuntimeError:
                        failed = step
                        break
                    if step == 1:
                        grads = {
                            n: None if p.grad is None else p.grad.tolist()
                            for n, p in model.named_parameters()
                        }
                outcomes[recording] = (failed, grads, report)
            plain_failed, plain_grads, _ = outcomes[False]
            failed, grads, report = outcomes[True]
            emit(
                case=f"compiled-ddp/{name}/{how}",
                plain_fails_at=plain_failed,
                fails_at=failed,
                same_grads=grads == plain_grads,
                held=None
                if report is None
                else [p.name for p in report.dead if p.rests_on_assumption],
            )


class Detached(nn.Module):
    """A trainable side branch detached into the output: dead in eager's graph, an input of
    the compiled one."""

    def __init__(self) -> None:
        super().__init__()
        self.main = nn.Linear(4, 4)
        self.side = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + self.side(x).detach()


def ddp_settings() -> None:
    """What record() reads off DDP: find_unused_parameters and static_graph."""
    for find_unused, static in ((False, False), (True, False), (False, True)):
        model = built("seed")
        ddp = DDP(model, find_unused_parameters=find_unused, static_graph=static)
        recording = recorded(ddp, ddp, MODELS["seed"][1](), True)
        emit(case=f"ddp-settings/{find_unused}/{static}", ddp=list(recording.ddp or ()))


def unread_outputs() -> None:
    """A loss on one of two outputs, under the DDPs that pass outputs through their
    ``_DDPSink`` (searching for unused parameters; static_graph's first step): the recorded
    report against the plain model's, and the parameters a real backward gives a gradient
    (the sink runs the other head's accumulators with none)."""
    settings = [("ddp", True, False), ("ddp", False, True), ("replicate", True, False)]
    for how, find_unused, static in settings:
        for backward in (True, False):
            reports, graded = [], []
            for wrapped in (False, True):
                torch.manual_seed(0)
                model = models.TwoHeads()
                job: nn.Module = model
                if wrapped and how == "ddp":
                    job = DDP(model, find_unused_parameters=find_unused, static_graph=static)
                elif wrapped:  # its DDP's outputs are the model's own: the sink is inside
                    replicate(model, find_unused_parameters=find_unused)
                with execorder.record(job) as recording:
                    policy, _ = job(torch.ones(2, 4))
                    if backward:
                        policy.sum().backward()
                reports.append(as_eager(recording.report(target="two-heads").to_dict()))
                graded.append({n for n, p in model.named_parameters() if p.grad is not None})
            report = recording.report()
            gets = {p.name for p in report.all_params() if p.gets_gradient}
            emit(
                case=f"unread/{how}/{find_unused}/{static}" + ("" if backward else "/forward"),
                equal=first_difference(reports[0], reports[1]),
                truth=None
                if not backward or gets == graded[1] == graded[0]
                else f"{sorted(gets)} != {graded}",
            )
    reports, grads = [], []
    for sharded in (False, True):
        torch.manual_seed(0)
        model = models.UnitTakesUnused()
        if sharded:
            fully_shard(model.block)
            fully_shard(model)
        with execorder.record(model) as recording:
            model(torch.ones(2, 4)).sum().backward()
        reports.append(as_eager(recording.report(target="unit-takes-unused").to_dict()))
        grads.append(
            {
                n: None if p.grad is None else float(p.grad.full_tensor().abs().sum())
                for n, p in model.named_parameters()
            }
            if sharded
            else {n: None if p.grad is None else 1.0 for n, p in model.named_parameters()}
        )
    emit(
        case="unread/fsdp",
        equal=first_difference(reports[0], reports[1]),
        dead=[p["name"] for p in reports[1]["dead"]],
        plain_side=grads[0]["side.weight"],
        fsdp_side=grads[1]["side.weight"],
    )


def three_steps(
    make: Callable[[], tuple[nn.Module, nn.Module]],
    step: Callable[..., None],
    watched: bool | int,
) -> tuple[int | None, bool, str | None]:
    """Three real steps of a job (``make`` gives the model and what the loop calls; ``step``
    takes that, a batch and the step's number), each rank on its own data, one step under a
    StepWatch (``watched``: True for step 1, or the step) or none: the step DDP fails at
    (None: it runs), whether the ranks' weights still agree after, and what the watch
    stopped with."""
    from execorder.training import StepWatch

    torch.manual_seed(0)
    model, job = make()
    step_of = torch.optim.SGD(model.parameters(), lr=0.1)
    watch, failed, stopped = StepWatch(), None, None
    for n in (1, 2, 3):
        torch.manual_seed(100 * RANK + n)  # each rank its own batch
        if watched and n == int(watched):
            watch.begin(job, n)
        try:
            step(job, torch.randn(3, 4), n)
        except RuntimeError:
            failed = n
            watch.abort()
            break
        if watched and n == int(watched):
            stopped = stop_of(watch)
            if stopped is not None:
                break
        step_of.step()
        step_of.zero_grad()
    return failed, replicas_agree(model), stopped


def run_both(
    case: str, make: Callable[[], tuple[nn.Module, nn.Module]], step: Callable[..., None]
) -> None:
    """Three real steps unwatched and three with step 1 watched (:func:`three_steps`): where
    the job fails and whether its ranks' weights still agree, where the watched one fails
    and what the watch stopped it with."""
    (failed, agree, _), (watched_failed, _, stopped) = (
        three_steps(make, step, watched) for watched in (False, True)
    )
    emit(
        case=case,
        fails_at=failed,
        replicas_agree=agree,
        watched_fails_at=watched_failed,
        stopped=stopped,
    )


def stop_of(watch: Any) -> str | None:
    """End a watched step: what the watch stopped it with, or None."""
    from execorder.errors import ExecOrderError

    try:
        watch.end()
    except ExecOrderError as exc:
        return str(exc)
    return None


def replicas_agree(model: nn.Module) -> bool:
    """Whether every rank holds the same weights (gathered to each rank, compared exactly)."""
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.zeros_like(weights) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, weights)
    return all(torch.equal(gathered[0], w) for w in gathered)


def _changed_after(change: str, find_unused: bool, static: bool) -> tuple[nn.Module, nn.Module]:
    """A model whose first block requires grad when DDP wraps it and not after (``frozen``),
    or the reverse (``trainable``), or changes places with the last (``swapped``)."""
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    mid = model[0]  # every parameter gets its gradient, but for a frozen one
    last = model[2]  # as large: swapped for it, DDP's count and bytes stay the same
    mid.requires_grad_(change == "frozen" or change == "swapped")
    last.requires_grad_(change != "swapped")
    job = DDP(model, find_unused_parameters=find_unused, static_graph=static)
    mid.requires_grad_(change == "trainable")
    last.requires_grad_(True)
    return model, job


def _summed(job: nn.Module, x: torch.Tensor, n: int) -> None:
    job(x).sum().backward()


def changed_after_wrapping() -> None:
    """``requires_grad`` turned off (or on) for a block after DDP wrapped the model, under each
    DDP setting: three real steps (whether DDP fails, and whether the ranks' weights still
    agree), against a StepWatch of step 1."""
    for find_unused, static in ((False, False), (True, False), (False, True)):
        for change in ("frozen", "trainable", "swapped"):
            make = functools.partial(_changed_after, change, find_unused, static)
            run_both(f"changed/{change}/{find_unused}/{static}", make, _summed)


class Apart(nn.Module):
    """Two heads with nothing shared: a loss on each reaches its own head alone."""

    def __init__(self) -> None:
        super().__init__()
        self.policy = nn.Linear(4, 2)
        self.value = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.policy(x), self.value(x)


def unwrap_ddp(job: nn.Module) -> Any:
    return job.module if isinstance(job, DDP) else job


def _backwards(how: str, job: nn.Module, x: torch.Tensor, n: int = 1) -> None:
    """One training step's forward and backward(s), as ``how`` writes its losses."""
    if how in ("later", "earlier"):  # the value head in the loss from step 2 on, or in 1 only
        policy, value = job(x)
        (policy.sum() + (value.sum() if (n > 1) == (how == "later") else 0)).backward()
        return
    if how == "penalty":  # a gradient penalty: autograd.grad through forward, then backward
        x.requires_grad_(True)
        policy, value = job(x)
        (slope,) = torch.autograd.grad(value.sum(), x, create_graph=True)
        (policy.sum() + value.sum() + slope.pow(2).sum()).backward()
        return
    policy, value = job(x)
    weight = unwrap_ddp(job).value.weight
    if how in ("decay-first", "decay-after", "batch-after"):  # a backward of its own
        if how == "decay-first":  # weight decay
            weight.pow(2).sum().backward()
        (policy.sum() + value.sum()).backward()
        if how == "decay-after":
            weight.pow(2).sum().backward()
        elif how == "batch-after":  # a term of the weights and the batch, not through forward
            (weight * x.mean()).sum().backward()
    elif how == "summed":
        (policy.sum() + value.pow(2).sum()).backward()
    elif how == "one-output":  # two losses on one output's columns
        policy[:, 0].sum().backward(retain_graph=True)
        policy[:, 1].pow(2).sum().backward()
    else:  # a loss on each head, each its own backward
        policy.sum().backward(retain_graph=True)
        value.pow(2).sum().backward()


SEVERAL_BACKWARDS = {
    "shared": (models.TwoHeads, "heads"),
    "apart": (Apart, "heads"),
    "one-output": (models.TwoHeads, "one-output"),
    "penalty": (models.TwoHeads, "penalty"),
    "decay-first": (models.TwoHeads, "decay-first"),
    "decay-after": (models.TwoHeads, "decay-after"),
    "batch-after": (models.TwoHeads, "batch-after"),
    "summed": (models.TwoHeads, "summed"),
}


def _wrapped_in_ddp(
    build: Callable[[], nn.Module], find_unused: bool, static: bool
) -> tuple[nn.Module, nn.Module]:
    model = build()
    return model, DDP(model, find_unused_parameters=find_unused, static_graph=static)


def several_backwards() -> None:
    """Steps that call backward more than once over one forward (a loss on each head), under
    each DDP setting: three real steps (where DDP fails, and whether the ranks' weights still
    agree), against a StepWatch of step 1."""
    for name, (build, how) in SEVERAL_BACKWARDS.items():
        for find_unused, static in ((False, False), (True, False), (False, True)):
            make = functools.partial(_wrapped_in_ddp, build, find_unused, static)
            step = functools.partial(_backwards, how)
            run_both(f"backwards/{name}/{find_unused}/{static}", make, step)


def static_graph_later() -> None:
    """A head that joins the loss from step 2 on, under DDP(static_graph=True), which takes
    what got no gradient in its first step as unused for good: three real steps, and a
    StepWatch of step 1 (it lets the job run, and warns), of step 2 (the ranks' gradients
    differ) and of step 3 alone (their copies already differ)."""
    make = functools.partial(_wrapped_in_ddp, models.TwoHeads, False, True)
    step = functools.partial(_backwards, "later")
    outcomes = [three_steps(make, step, watched) for watched in (0, 1, 2, 3)]
    (failed, agree, _), *watched = outcomes
    first, second, third = (stopped for _, _, stopped in watched)
    emit(
        case="static-later",
        fails_at=failed,
        replicas_agree=agree,
        first=first,
        second=second,
        third=third,
    )


def static_graph_earlier() -> None:
    """A head in the loss in step 1 only, under DDP(static_graph=True), which then waits for
    its gradient in every step: three real steps, and a StepWatch of step 1 and of step 2."""
    make = functools.partial(_wrapped_in_ddp, models.TwoHeads, False, True)
    step = functools.partial(_backwards, "earlier")
    (failed, _, _), (_, _, first), (_, _, second) = (
        three_steps(make, step, watched) for watched in (0, 1, 2)
    )
    emit(case="static-earlier", fails_at=failed, first=first, second=second)


class Encoded(nn.Module):
    """Two encoder blocks and a head, each block with a layer forward never runs (``idle``)
    unless ``idle`` is False; ``spare`` is outside them, never run."""

    def __init__(self, idle: bool = True) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(idle) for _ in range(2))
        self.head = nn.Linear(4, 1)
        self.spare = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class Block(nn.Module):
    def __init__(self, idle: bool) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.idle = nn.Linear(4, 4) if idle else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.lin(x))


def _inside(
    how: str, find_unused: bool, idle: bool, head: bool
) -> Callable[[], tuple[nn.Module, nn.Module]]:
    """The model with a DDP of its own for each block (and the head, with ``head``): DDP
    put in the module's place, or torch's composable replicate() on it."""

    def make() -> tuple[nn.Module, nn.Module]:
        model = Encoded(idle)
        owners = [(model.blocks, str(k)) for k in range(len(model.blocks))]
        for owner, name in owners + [(model, "head")] * head:
            module = owner._modules[name]
            if how == "ddp":
                owner._modules[name] = DDP(module, find_unused_parameters=find_unused)
            else:
                replicate(module, find_unused_parameters=find_unused)
        return model, model

    return make


# (find_unused_parameters, the blocks' idle layers, the head in a DDP of its own)
INSIDE = [(False, True, False), (True, True, False), (False, False, True), (True, True, True)]


def ddps_inside() -> None:
    """DDPs that run modules inside the model, not the model (the spare layer, never run, is
    no DDP's): three real steps, unwatched and with step 1 watched, and the recorded step's
    report."""
    for how in ("ddp", "replicate"):
        for find_unused, idle, head in INSIDE:
            make = _inside(how, find_unused, idle, head)
            run_both(
                f"inside/{how}/{find_unused}/{idle}/{head}",
                make,
                lambda job, batch, _: job(batch).sum().backward(),
            )
            torch.manual_seed(0)
            _, job = make()
            with execorder.record(job) as recording:
                job(torch.randn(3, 4)).sum().backward()
            report = recording.report()
            emit(
                case=f"inside-report/{how}/{find_unused}/{idle}/{head}",
                unused=[p.name for p in report.unused],
                first_uses=[p.name for p in report.params],
                inside=[[d.name, *d.settings, list(d.registered)] for d in recording.ddps_inside],
            )


class ReadsOne(nn.Module):
    """An encoder of two outputs (:class:`Apart`), of which the model reads the first."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = Apart()
        self.head = nn.Linear(2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(x)[0])


def sink_inside() -> None:
    """A DDP searching for unused parameters around the encoder only: its _DDPSink, inside
    the model, passes no gradient to the output the model does not read. The report, with
    and without a backward, against the plain model's; the gradients the real step gave."""
    for backward in (True, False):
        reports = []
        for wrap in (False, True):
            torch.manual_seed(0)
            model = ReadsOne()
            if wrap:
                model.enc = DDP(model.enc, find_unused_parameters=True)  # type: ignore[assignment]
            with execorder.record(model) as recording:
                out = model(torch.randn(2, 4))
                if backward:
                    out.sum().backward()
            reports.append(recording.report().to_dict())
        emit(
            case=f"inside-sink/{backward}",
            equal=first_difference(reports[0], reports[1]),
            dead=[p["name"] for p in reports[1]["dead"]],
            graded=sorted(
                n.replace("module.", "") for n, p in model.named_parameters() if p.grad is not None
            ),
        )


def passes_none() -> None:
    """A Function of the model's own that passes no gradient to b, under DDP waiting for
    every parameter: b's accumulators run with none, DDP counts them ready, and the job
    runs; so the watch must let it."""

    def make() -> tuple[nn.Module, nn.Module]:
        model = models.PassesNoneModel()
        return model, DDP(model)

    run_both("passes-none", make, lambda job, batch, _: job(batch).sum().backward())


def _peak(wrapper: str, recorded: bool) -> int:
    """The peak of two steps of the tiny Llama under ``wrapper`` (the second recorded, or
    not), by PyTorch's FSDPMemTracker under FSDP2, its MemTracker otherwise."""
    import contextlib

    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
    from torch.distributed._tools.mem_tracker import MemTracker

    model = built("llama")
    call = WRAPPERS[wrapper](model)
    step = torch.optim.AdamW(model.parameters(), foreach=False)
    # 48 tokens: logits of 49 KB, which a recording that held forward's outputs would add
    inputs = {"input_ids": torch.randint(0, 128, (2, 48), generator=torch.Generator())}
    tracker: Any = FSDPMemTracker(model, step) if "fsdp" in wrapper else MemTracker()
    if not isinstance(tracker, FSDPMemTracker):
        tracker.track_external(model, step)
    with tracker:
        for n in range(2):
            with execorder.record(call) if recorded and n else contextlib.nullcontext():
                loss(call(**inputs)).backward()
            step.step()
            step.zero_grad()
            tracker.reset_mod_stats()  # the trackers measure one step at a time
    return int(tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"])


def recorded_memory() -> None:
    """A step's peak, recorded and not, under FSDP2 (resharding after forward, or not) and
    DDP: the recording holds nothing of the step's. Each is measured twice, alternating,
    and the lower kept: a first use of something allocates once (37 KB here, now and
    then). Under FSDP2 on gloo the peak also varies from run to run by a few KB (when a
    collective's buffers go), recorded or not; the smallest unit's unsharded parameters,
    which a recording that held them would add, are given beside it."""
    import gc

    model = built("llama")
    blocks = [sum(p.numel() * p.element_size() for p in b.parameters()) for b in blocks_of(model)]
    root = sum(p.numel() * p.element_size() for p in model.parameters()) - sum(blocks)
    for wrapper in ("fsdp", "fsdp-keep", "ddp"):
        peaks: dict[bool, list[int]] = {False: [], True: []}
        for recorded in (False, True, False, True):
            gc.collect()
            peaks[recorded].append(_peak(wrapper, recorded))
        emit(
            case=f"memory/{wrapper}",
            plain=min(peaks[False]),
            recorded=min(peaks[True]),
            unit=min(root, *blocks),
        )


def rank_batch(model_name: str) -> dict[str, Any]:
    """The model's inputs, made this rank's own."""
    batch = {}
    for key, value in MODELS[model_name][1]().items():
        if torch.is_tensor(value) and value.is_floating_point():
            value = value + 0.1 * (RANK + 1)
        elif torch.is_tensor(value):
            value = (value + RANK + 1) % 32
        batch[key] = value
    return batch


def healthy_ddp_jobs() -> None:
    """Each DDP case of the matrix (DDP, compiled DDP, replicate; a checkpointed Llama, LoRA,
    frozen parameters), a step on each rank's own data: what the watch compares across the
    ranks (execorder.ranks.unreduced) finds nothing DDP left unreduced."""
    from execorder.ranks import unreduced

    for model_name, wrapper, _, _ in MATRIX:
        if "ddp" not in wrapper and wrapper != "replicate":
            continue
        call = WRAPPERS[wrapper](built(model_name))
        with execorder.record(call) as recording:
            loss(call(**rank_batch(model_name))).backward()
        left = unreduced(recording)
        emit(case=f"healthy/{model_name}/{wrapper}", replicas=left.replicas, grads=left.gradients)


class RankExperts(nn.Module):
    """Two experts of one shape in one FSDP2 unit: rank r runs expert r alone, or in every
    other call (``swap``) the other one."""

    def __init__(self, swap: bool = False) -> None:
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.experts = nn.ModuleList(nn.Linear(4, 4) for _ in range(2))
        self.swap, self.calls = swap, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.experts[(RANK + self.swap * self.calls) % 2](self.body(x))


def fsdp_gradients_apart() -> None:
    """Under FSDP2: each FSDP2 case of the matrix (and a unit that takes an input it does
    not use, whose zeros FSDP2 reduces), a step on each rank's own data: the ranks give
    gradients to the same parameters (execorder.ranks.gradients_apart finds none). Then
    :class:`RankExperts` under ``fully_shard``: the real step runs with no error, and its
    sharded gradients are not the average of the ranks' own (each rank's expert reduced
    with the other's); a StepWatch of that step stops it."""
    from execorder.ranks import gradients_apart
    from execorder.training import StepWatch

    cases = {(m, w) for m, w, _, _ in MATRIX if "fsdp" in w or w == "hsdp"}
    for model_name, wrapper in sorted(cases):
        call = WRAPPERS[wrapper](built(model_name))
        with execorder.record(call) as recording:
            loss(call(**rank_batch(model_name))).backward()
        emit(case=f"healthy-fsdp/{model_name}/{wrapper}", apart=gradients_apart(recording))
    torch.manual_seed(0)
    model = models.UnitTakesUnused()
    fully_shard(model.block)
    fully_shard(model)
    with execorder.record(model) as recording:
        model(torch.ones(2, 4) * (RANK + 1)).sum().backward()
    emit(case="healthy-fsdp/unit-takes-unused", apart=gradients_apart(recording))
    batch = torch.randn(2, 4, generator=torch.Generator().manual_seed(RANK))
    truth = _averaged([batch])
    # Unwatched and watched; then with FSDP2 reducing zeros for what got no gradient.
    for zeros in (False, True):
        wrong: list[list[str]] = []
        stopped: list[str | None] = []
        for watched in (False, True):
            torch.manual_seed(0)
            sharded = RankExperts()
            fully_shard(sharded)
            if zeros:
                sharded.set_reduce_scatter_unused_params(True)
            watch = StepWatch()
            if watched:
                watch.begin(sharded, 1)
            sharded(batch).sum().backward()
            stopped.append(stop_of(watch))
            wrong.append(_wrong_shards(sharded, truth))
        emit(case=f"fsdp-apart/{zeros}", wrong=wrong, stopped=stopped)
    # Two micro-batches, the first unreduced (set_requires_gradient_sync(False)), each rank
    # running the other expert in each: FSDP2 reduces both experts' gradients on every rank,
    # and the watch of either micro-batch lets it be.
    truth = _averaged([batch, batch], swap=True)
    torch.manual_seed(0)
    sharded = RankExperts(swap=True)
    fully_shard(sharded)
    stops: list[str | None] = []
    unused: list[list[str]] = []
    for sync in (False, True):
        sharded.set_requires_gradient_sync(sync)
        watch = StepWatch()
        watch.begin(sharded, 1)
        sharded(batch).sum().backward()
        stops.append(stop_of(watch))
        unused.append([p.name for p in watch.reports[1].unused])
    wrong_now = _wrong_shards(sharded, truth)
    emit(case="fsdp-apart/accumulated", wrong=wrong_now, stopped=stops, unused=unused)


def _averaged(batches: list[torch.Tensor], swap: bool = False) -> dict[str, torch.Tensor]:
    """The truth: each parameter's gradient of a plain :class:`RankExperts` over ``batches``,
    averaged over the ranks, unsharded (zeros for none)."""
    torch.manual_seed(0)
    plain = RankExperts(swap=swap)
    for batch in batches:
        plain(batch).sum().backward()
    truth = {}
    for name, param in plain.named_parameters():
        grad = torch.zeros_like(param) if param.grad is None else param.grad
        dist.all_reduce(grad)
        truth[name] = grad / dist.get_world_size()
    return truth


def _wrong_shards(sharded: nn.Module, truth: dict[str, torch.Tensor]) -> list[str]:
    """The parameters whose FSDP2 shard of gradient on this rank is not its rows of the truth
    (FSDP2 shards dim 0 evenly, padded)."""
    wrong = []
    for name, param in sharded.named_parameters():
        rows = -(-param.shape[0] // dist.get_world_size())
        got = None if param.grad is None else param.grad.to_local()
        if got is None or not torch.allclose(got, truth[name][RANK * rows : (RANK + 1) * rows]):
            wrong.append(name)
    return wrong


def accumulation() -> None:
    """Gradient accumulation, as the trainers do it: the first micro-batch of each step under
    DDP's ``no_sync()`` (gradients summed locally, each rank its own), the second synced; in
    ``drift``, the second's backward is followed by one of a term of a weight and the batch,
    which DDP does not reduce. A StepWatch of step 1 sees the first as unsynced, records the
    second ``again()``, and stops on the drift alone."""
    from execorder.training import StepWatch

    for drift in (False, True):
        torch.manual_seed(0)
        model = models.TwoHeads()
        job = DDP(model)
        step_of = torch.optim.SGD(model.parameters(), lr=0.1)
        watch, stopped, unsynced = StepWatch(), None, []
        for n in (1, 2):
            torch.manual_seed(100 * RANK + n)
            if n == 1:
                watch.begin(job, n)
            with job.no_sync():
                _backwards("summed", job, torch.randn(3, 4))
            if n == 1:
                unsynced.append(watch.unsynced)
                watch.again()
            x = torch.randn(3, 4)
            _backwards("summed", job, x)
            if drift:
                (model.value.weight * x.mean()).sum().backward()
            if n == 1:
                unsynced.append(watch.unsynced)
                stopped = stop_of(watch)
                if stopped is not None:
                    break
            step_of.step()
            step_of.zero_grad()
        agree = replicas_agree(model)
        emit(case=f"accumulated/{drift}", unsynced=unsynced, agree=agree, stopped=stopped)


def refusals() -> None:
    """FSDP1 is refused; a forward that reads copies of the parameters says it saw nothing."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    model = built("seed")
    try:
        with execorder.record(FullyShardedDataParallel(model, device_id=torch.device("cpu"))):
            pass
        emit(case="fsdp1", error=None)
    except RecordingError as exc:
        emit(case="fsdp1", error=str(exc))

    model = built("seed")
    copies = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    with execorder.record(model) as recording:
        torch.func.functional_call(model, copies, (torch.randn(2, 6), True)).sum().backward()
    report = recording.report(target="seed")
    result = execorder.ranks.compare(report)
    emit(case="copies", no_use_seen=report.no_use_seen, **result.to_dict())


# -- compare: a per-rank branch, wrapped and plain ----------------------------


def image_model() -> nn.Module:
    torch.manual_seed(0)
    return models.OptionalImage()


def checkpoint_units(model: nn.Module) -> nn.Module:
    for name in ("text", "vision"):
        setattr(model, name, checkpoint_wrapper(getattr(model, name)))
    return model


def tp_head(model: nn.Module) -> nn.Module:
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    parallelize_module(model, mesh, {"head": ColwiseParallel()})
    return model


def root_fsdp(model: nn.Module) -> nn.Module:
    fully_shard(model)
    return model


# FSDP2 takes no backward here: ranks whose gradients differ in a unit would
# reduce-scatter different tensors (the hang this comparison forestalls).
BRANCHES: dict[str, tuple[Callable[[nn.Module], nn.Module], bool]] = {
    "plain": (lambda m: m, True),
    "plain-forward-only": (lambda m: m, False),
    "fsdp": (root_fsdp, False),
    "ddp": (lambda m: DDP(m, find_unused_parameters=True), True),
    "compile": (lambda m: torch.compile(m, backend="aot_eager"), True),
    "checkpoint": (checkpoint_units, True),
    "tp": (tp_head, True),
}


def compare_mode() -> None:
    world = dist.get_world_size()
    for name, (wrap, backward) in BRANCHES.items():
        call = wrap(image_model())
        inputs = models.image_on_rank_0(rank=RANK, world_size=world)
        with execorder.record(call) as recording:
            out = call(**inputs)
            if backward:
                out.float().sum().backward()
        result = execorder.ranks.compare(recording.report(target="image"))
        emit(case=name, backward=backward, **result.to_dict())


# -- trainers -------------------------------------------------------------------


class AuxHead(nn.Module):
    """A regression net with an auxiliary head the loss never uses."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.head = nn.Linear(4, 1)
        self.aux_head = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        pred = self.head(torch.relu(self.body(x))).squeeze(-1)
        return {"loss": F.mse_loss(pred, labels)}


class AuxOnRank0(AuxHead):
    """Rank 0 adds the auxiliary head to its loss; the other ranks do not."""

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        h = torch.relu(self.body(x))
        pred = self.head(h).squeeze(-1)
        if RANK == 0:
            pred = pred + self.aux_head(h).squeeze(-1)
        return {"loss": F.mse_loss(pred, labels)}


class AuxInFirstMicroBatch(AuxHead):
    """Two micro-batches a step: the auxiliary head joins the loss in the first of each
    (under DDP's no_sync()) and not in the second, which DDP reduces and waits for it in."""

    use_in = 0  # which micro-batch of the two uses the auxiliary head

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        h = torch.relu(self.body(x))
        pred = self.head(h).squeeze(-1)
        if self.calls % 2 == self.use_in:
            pred = pred + self.aux_head(h).squeeze(-1)
        self.calls += 1
        return {"loss": F.mse_loss(pred, labels)}


class AuxInLastMicroBatch(AuxInFirstMicroBatch):
    """The reverse: the head joins the loss in the micro-batch DDP reduces, so DDP runs."""

    use_in = 1


class Pairs(torch.utils.data.Dataset):  # type: ignore[type-arg]
    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(i)
        return {"x": torch.randn(4, generator=g), "labels": torch.randn((), generator=g)}


def outcome(run: Callable[[], Any], steps: Callable[[], int]) -> dict[str, Any]:
    try:
        run()
    except Exception as exc:
        return {"steps": steps(), "error": type(exc).__name__, "message": str(exc)[:600]}
    return {"steps": steps(), "error": None}


# (run, the model, find_unused_parameters, the callback's arguments or None, micro-batches)
TRAINER_RUNS: list[tuple[str, type[nn.Module], bool, dict[str, Any] | None, int]] = [
    ("plain", AuxHead, False, None, 1),
    ("callback", AuxHead, False, {}, 1),
    ("compare", AuxOnRank0, True, {"steps": (), "compare_every": 2}, 1),
    ("aux-first/plain", AuxInFirstMicroBatch, False, None, 2),
    ("aux-first/callback", AuxInFirstMicroBatch, False, {}, 2),
    ("aux-last/plain", AuxInLastMicroBatch, False, None, 2),
    ("aux-last/callback", AuxInLastMicroBatch, False, {}, 2),
]


def transformers_trainer(
    model: nn.Module, find_unused: bool, callback: Any, accumulate: int
) -> dict[str, Any]:
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(),
        use_cpu=True,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=accumulate,
        max_steps=3,
        ddp_backend="gloo",
        ddp_find_unused_parameters=find_unused,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
    )
    callbacks = [callback] if callback is not None else []
    trainer = Trainer(model=model, args=args, train_dataset=Pairs(), callbacks=callbacks)
    return outcome(trainer.train, lambda: trainer.state.global_step)


def lightning_trainer(
    model: nn.Module, find_unused: bool, callback: Any, accumulate: int
) -> dict[str, Any]:
    import lightning as L

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
            return self.net(**batch)["loss"]

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = L.Trainer(
        accelerator="cpu",
        devices=dist.get_world_size(),
        strategy="ddp_find_unused_parameters_true" if find_unused else "ddp",
        max_steps=3,
        accumulate_grad_batches=accumulate,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback] if callback is not None else [],
    )
    loader = torch.utils.data.DataLoader(Pairs(), batch_size=4)
    return outcome(lambda: trainer.fit(Module(), loader), lambda: trainer.global_step)


def trainers_mode(kind: str, out_dir: str) -> None:
    if kind == "transformers":
        from execorder.training.transformers import ExecOrderCallback
    else:
        from execorder.training.lightning import ExecOrderCallback  # type: ignore[assignment]
    train = transformers_trainer if kind == "transformers" else lightning_trainer
    for run, build, find_unused, arguments, accumulate in TRAINER_RUNS:
        file = run.replace("/", "-")
        output = str(Path(out_dir) / f"{kind}-{file}-step{{step}}-rank{{rank}}.json")
        callback = None if arguments is None else ExecOrderCallback(output=output, **arguments)
        torch.manual_seed(0)
        emit(case=f"{kind}/{run}", **train(build(), find_unused, callback, accumulate))


def apart_mode(how: str) -> None:
    """Three steps of :class:`AuxOnRank0` under ``DDP(find_unused_parameters=False)``, step 1
    watched (``how``: ``watched``), or recorded and compared across ranks as ranks.md shows
    (``compared``), or neither (``plain``): each rank says how its run ended.

    Rank 1 gives the auxiliary head no gradient, so its DDP never sends the all-reduce of
    that bucket, for which rank 0 waits in backward until rank 1 leaves. One job each: the
    process group is of no use after."""
    from execorder.errors import ExecOrderError
    from execorder.training import StepWatch

    torch.manual_seed(0)
    job = DDP(AuxOnRank0())
    watch = StepWatch(steps=(1,)) if how == "watched" else None
    data = torch.Generator().manual_seed(RANK)
    for step in range(1, 4):
        x, labels = torch.randn(4, 4, generator=data), torch.randn(4, generator=data)
        try:
            if watch is not None and watch.wants(step):
                watch.begin(job, step)
            if how == "compared" and step == 1:
                with execorder.record(job) as recording:
                    job(x, labels)["loss"].backward()
                execorder.ranks.compare(recording.report())
            else:
                job(x, labels)["loss"].backward()
            if watch is not None and watch.active:
                watch.end()
        except Exception as exc:
            found = {"error": type(exc).__name__, "message": str(exc)[:600]}
            if isinstance(exc, ExecOrderError):
                found |= {"params": list(exc.params)}
                found |= {"indices": list(getattr(exc, "ddp_indices", []))}
            elif listed := re.search(r"did not receive grad for rank \d+: ([\d ]+)", str(exc)):
                found["indices"] = [int(i) for i in listed.group(1).split()]
            emit(case=f"apart/{how}", step=step, **found)
            return
    emit(case=f"apart/{how}", step=None)


if __name__ == "__main__":
    import logging

    logging.disable(logging.WARNING)
    mode = sys.argv[1]
    dist.init_process_group("gloo")
    RANK = dist.get_rank()
    try:
        if mode == "wrappers":
            wrappers_mode()
        elif mode == "compare":
            compare_mode()
        elif mode == "apart":
            apart_mode(sys.argv[2])
        else:
            trainers_mode(mode, sys.argv[2])
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    # Every line is written: leave without the interpreter's teardown, where
    # gloo's threads abort now and then (pytorch#179291).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
