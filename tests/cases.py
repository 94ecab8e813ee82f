"""Every sample and test model under every concrete setting, with real inputs.

Used to check execorder's predictions against a real backward and against DDP.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import models
import torch
from reuse import Reuse
from seed import Model
from tied import TiedLM
from torch import nn
from transformer import Transformer


@dataclass(frozen=True)
class Case:
    build: Callable[[], nn.Module]
    inputs: Callable[[], tuple[Any, ...]]
    concrete_args: dict[str, Any] = field(default_factory=dict)


def _x(*shape: int) -> Callable[[], tuple[Any, ...]]:
    return lambda: (torch.randn(*shape),)


def _ids(vocab: int, *shape: int) -> Callable[[], tuple[Any, ...]]:
    return lambda: (torch.randint(0, vocab, shape),)


CASES: dict[str, Case] = {
    "seed-all-layers": Case(Model, _x(2, 6), {"run_all_layers": True}),
    "seed-some-layers": Case(Model, _x(2, 6), {"run_all_layers": False}),
    "tied": Case(TiedLM, _ids(32, 2, 5)),
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
    "opaque-leaf": Case(models.OpaqueLeaf, _x(2, 3, 4)),
    "attention": Case(models.WithAttention, _x(2, 3, 8)),
}


def backward_no_grad(case: Case) -> list[str]:
    """Names of trainable parameters with no gradient after a real backward."""
    model = case.build()
    outputs = model(*case.inputs(), **case.concrete_args)
    flat = outputs if isinstance(outputs, tuple) else (outputs,)
    loss = sum(o.float().sum() for o in flat if o.requires_grad)
    if isinstance(loss, torch.Tensor):
        loss.backward()
    return [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
