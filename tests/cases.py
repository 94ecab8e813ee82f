"""Every sample and test model under every concrete setting, with real inputs.

Used to check execorder's predictions against a real backward and against DDP.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import models
import torch
from llama import Llama
from moe import MoE
from reuse import Reuse
from seed import Model
from shared import SharedLayers
from tied import TiedLM
from torch import nn
from transformer import Transformer

import execorder
from execorder import eager
from execorder.report import AssumptionKind, Report


@dataclass(frozen=True)
class Case:
    """A model, its inputs, and its concrete arguments.

    ``fx`` is False for models torch.fx cannot trace, ``meta`` False for
    forwards that need values computed from parameters (both then run
    eagerly on CPU; a meta run of them refuses, or assumes and says so).
    """

    build: Callable[[], nn.Module]
    inputs: Callable[[], tuple[Any, ...]]
    concrete_args: dict[str, Any] = field(default_factory=dict)
    fx: bool = True
    meta: bool = True


def predict(case: Case) -> Report:
    """execorder's report for a case: FX where it can trace, else eager on CPU."""
    torch.manual_seed(0)
    if case.fx:
        return execorder.trace(case.build(), concrete_args=case.concrete_args)
    return eager.trace(case.build(), args=case.inputs(), kwargs=case.concrete_args)


def unseen_backward_resting(report: Report) -> set[str]:
    """The parameters whose status rests on a custom Function's unseen backward: taken as
    dead, and said to rest on it (a real backward may give them a gradient)."""
    if not any(a.assumed is AssumptionKind.BACKWARD for a in report.assumptions):
        return set()  # a run that assumed selections only: every status is to be exact
    return {p.name for p in report.on_assumption}


def _x(*shape: int) -> Callable[[], tuple[Any, ...]]:
    return lambda: (torch.randn(*shape),)


def _ids(vocab: int, *shape: int) -> Callable[[], tuple[Any, ...]]:
    return lambda: (torch.randint(0, vocab, shape),)


CASES: dict[str, Case] = {
    "seed-all-layers": Case(Model, _x(2, 6), {"run_all_layers": True}),
    "seed-some-layers": Case(Model, _x(2, 6), {"run_all_layers": False}),
    "tied": Case(TiedLM, _ids(32, 2, 5)),
    "shared": Case(SharedLayers, _ids(100, 2, 5)),
    "reuse": Case(Reuse, _x(2, 8)),
    "transformer": Case(lambda: Transformer(n_layers=2), _ids(64, 2, 5)),
    "keyword": Case(models.KeywordParam, _x(2, 4)),
    "nested": Case(models.NestedParams, _x(5, 4)),
    "leaf-arg": Case(models.LeafArgParam, _x(3, 2)),
    "returned": Case(models.ReturnedParam, _x(2, 4)),
    "input-named-like-param": Case(
        models.InputNamedLikeParam, lambda: (torch.randn(2, 4), torch.randn(4, 4))
    ),
    "called-twice": Case(models.CalledTwice, _x(2, 4)),
    "branchy-off": Case(models.Branchy, _x(2, 4), {"flag": False, "mode": "double"}),
    "branchy-on": Case(models.Branchy, _x(2, 4), {"flag": True, "mode": "plain"}),
    "shape-only": Case(models.ShapeOnly, _x(3, 16)),
    "argmax-routing": Case(models.ArgmaxRouting, _x(5, 4)),
    "in-place": Case(models.InPlace, _x(2, 4)),
    "frozen": Case(models.Frozen, _x(2, 4)),
    "external": Case(models.ExternalUse, _x(2, 4)),
    "ddp-ignores": Case(models.DdpIgnores, _x(2, 4)),
    "ddp-ignores-all-unused": Case(
        lambda: models.DdpIgnores(extra_ignored=True, root_ignored=True), _x(2, 4)
    ),
    "opaque-leaf": Case(models.OpaqueLeaf, _x(2, 3, 4)),
    "attention": Case(models.WithAttention, _x(2, 3, 8)),
    "ordered": Case(models.Ordered, _x(2, 4), {"swap": False}),
    "ordered-swapped": Case(models.Ordered, _x(2, 4), {"swap": True}),
    "needs-width": Case(lambda: models.NeedsWidth(4, 2), _x(2, 4)),
    "llama": Case(Llama, _ids(128, 2, 6)),
    "moe": Case(MoE, _x(4, 16), fx=False, meta=False),
    "data-dependent": Case(models.DataDependent, _x(2, 4), fx=False),
    "param-dependent": Case(models.ParamDependent, _x(2, 4), fx=False, meta=False),
    "distill": Case(models.Distill, _x(2, 16)),
    "grad-modes": Case(models.GradModes, _x(2, 4)),
    "switches-off": Case(models.SwitchesOff, _x(2, 4)),
    "checkpoint-reentrant": Case(models.Checkpointed, _ids(16, 2, 3)),
    "checkpoint-reentrant-frozen-input": Case(
        lambda: models.Checkpointed(frozen_embedding=True), _ids(16, 2, 3)
    ),
    "two-heads": Case(models.TwoHeads, _x(2, 4)),
    "structured-outputs": Case(models.StructuredOutputs, _x(2, 4)),
    "custom-functions": Case(models.CustomFunctions, _x(2, 4)),
    "unseen-backwards": Case(models.UnseenBackwards, _x(2, 4)),
    "listed-to-function": Case(models.ListedToFunction, _x(2, 4)),
    "torchscript": Case(models.TorchScripted, _x(2, 4), fx=False),
    "differentiates": Case(models.Differentiates, _x(5, 1), fx=False),
    "data-attribute": Case(models.DataAttribute, _x(2, 4)),
    "indices-only": Case(models.IndicesOnly, _x(2, 4)),
    "sampled-and-grouped": Case(models.SampledAndGrouped, _x(2, 4), meta=False),
    "boolean-results": Case(models.BooleanResults, _x(2, 4)),
    "written-into": Case(models.WrittenInto, _x(2, 4), meta=False),
    "written-after-read": Case(models.WrittenAfterRead, _x(2, 4)),
    "non-differentiable-outputs": Case(models.NonDifferentiableOutputs, _x(2, 4)),
    "written-by-function": Case(models.WrittenByFunction, _x(2, 4)),
    "read-for-shape-only": Case(models.ReadForShapeOnly, _x(2, 4)),
    "read-through-parameters": Case(models.ReadThroughParameters, _x(2, 4)),
    "pooling-indices": Case(models.PoolingIndices, _x(2, 4)),
    "checkpoint-reused-twice": Case(models.CheckpointReused, _x(2, 4)),
    "writes-cache": Case(models.WritesCache, _x(2, 4)),
    "checkpoint-reused-after": Case(lambda: models.CheckpointReused("after"), _x(2, 4)),
    "checkpoint-reused-first": Case(models.CheckpointReusedFirst, _x(2, 4)),
    "checkpoint-loop": Case(models.CheckpointLoop, _x(2, 4)),
    "own-checkpointing": Case(models.OwnCheckpointing, _x(2, 4)),
    "own-checkpointing-nested": Case(models.OwnCheckpointingNested, _x(2, 4)),
    "own-checkpoint-reused": Case(models.OwnCheckpointReused, _x(2, 4)),
    "own-checkpoint-partly-frozen": Case(models.OwnCheckpointPartlyFrozen, _x(2, 4)),
    "own-checkpoint-setup-context": Case(models.OwnCheckpointSetupContext, _x(2, 4)),
    "own-checkpoint-setup-context-partly-frozen": Case(
        models.OwnCheckpointSetupContextPartlyFrozen, _x(2, 4)
    ),
    "own-output-class": Case(models.OwnOutputClass, _x(2, 4), fx=False),
    "hooked-leaf": Case(models.HookedLeaf, _x(2, 4), meta=False),
    "hooked-root": Case(models.HookedRoot, _x(2, 4)),
    "checkpoint-non-reentrant": Case(lambda: models.Checkpointed(reentrant=False), _ids(16, 2, 3)),
}


def output_tensors(value: Any, path: str = "") -> list[tuple[str, torch.Tensor]]:
    """Every tensor a forward returned, by path (``logits``, ``aux.0``), as a loss may read it.

    The test's own walk, written apart from execorder's: tuples (a named one
    by field), lists, mappings, dataclasses and objects of the model's own
    classes; a tensor reached twice once.
    """
    found: dict[int, tuple[str, torch.Tensor]] = {}

    def walk(item: Any, at: str) -> None:
        if isinstance(item, torch.Tensor):
            found.setdefault(id(item), (at, item))
            return
        if isinstance(item, Mapping):
            items = [(str(k), v) for k, v in item.items()]
        elif isinstance(item, tuple) and hasattr(item, "_fields"):
            items = list(zip(item._fields, item, strict=True))
        elif isinstance(item, (list, tuple)):
            items = [(str(i), v) for i, v in enumerate(item)]
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            items = [(f.name, getattr(item, f.name)) for f in dataclasses.fields(item)]
        elif hasattr(item, "__dict__") and not isinstance(item, (type, nn.Module)):
            items = list(vars(item).items())
        else:
            return
        for key, child in items:
            walk(child, f"{at}.{key}" if at else key)

    walk(value, path)
    return list(found.values())


def ddp_registered(model: nn.Module) -> set[int]:
    """Ids of the parameters ``DistributedDataParallel(model)`` registers, by DDP's own code
    (its ``_build_params_for_reducer``, which needs no process group)."""
    from types import SimpleNamespace

    from torch.nn.parallel import DistributedDataParallel

    ignored = getattr(model, "_ddp_params_and_buffers_to_ignore", ())
    wrapper = SimpleNamespace(
        module=model, parameters_to_ignore=set(ignored), _assign_modules_buffers=lambda: None
    )
    params, _ = DistributedDataParallel._build_params_for_reducer(wrapper)  # type: ignore[arg-type]
    return {id(p) for p in params}


def backward_no_grad(case: Case, only: str | None = None) -> list[str]:
    """Names of trainable parameters no gradient reaches in a real backward, as DDP sees it.

    The loss sums every output, or only the one at path ``only``.

    Trainable as DDP registers them, before forward runs (forward may switch
    some off); reached when autograd runs the parameter's gradient
    accumulator, which is when DDP counts it ready (a parameter switched off
    after a use is reached, though its ``.grad`` stays None).
    """
    torch.manual_seed(0)
    model = case.build()
    registered = ddp_registered(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad and id(p) in registered]
    reached: set[str] = set()
    for name, param in model.named_parameters():
        if param.requires_grad:
            param.register_post_accumulate_grad_hook(lambda _, name=name: reached.add(name))
    outputs = model(*case.inputs(), **case.concrete_args)
    picked = [t for path, t in output_tensors(outputs) if only in (None, path)]
    loss = sum(t.float().sum() for t in picked if t.requires_grad)
    if isinstance(loss, torch.Tensor):
        loss.backward()
    return [n for n in trainable if n not in reached]
