"""Custom autograd Functions, as FX traces them.

``Function.apply`` runs the Function's ``forward`` under ``no_grad``: the ops
it records carry no gradient, and what a real backward does instead is the
Function's own ``backward``, which FX never sees. Stopping the graph walk
inside would call every parameter upstream of a custom Function dead (a fused
kernel, a straight-through estimator, a quantizer) while a real backward
gives them gradients.

So while FX traces, each ``Function.apply`` that gets traced values notes its
call (:class:`FunctionCall`) on the nodes it returns: the liveness walk goes
from those straight to the call's inputs, as the autograd engine goes from
the Function's node to its inputs' accumulators. That holds when grad was on
where it was called; a ``backward`` returning None for an input still reaches
that input's accumulator (DDP counts it ready, though ``.grad`` stays None).
Not seen: outputs ``forward`` marks non-differentiable (``ctx``), which count
as differentiable here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.fx
from torch.utils._pytree import tree_leaves

FUNCTION_CALL = "execorder_function_call"
"""``node.meta`` key: the custom autograd Function call whose output the node is."""


class FunctionCall:
    """One ``Function.apply`` as FX traced it.

    Attributes:
        inputs: The nodes of its traced arguments.
        outer_grad: Whether grad mode was on where it was called (its outputs
            have a history only then).
    """

    def __init__(self, inputs: list[torch.fx.Node], outer_grad: bool) -> None:
        self.inputs, self.outer_grad = inputs, outer_grad


@contextmanager
def functions_traced() -> Iterator[None]:
    """Stamp the outputs of every traced ``Function.apply`` with its :class:`FunctionCall`.

    Subclasses that define ``apply`` themselves (the reentrant checkpoint's,
    while :func:`execorder.backends.checkpointing.regions_traced` patches it)
    are left to their own. Restored exactly on exit, also when tracing raises.
    """
    Function = torch.autograd.Function
    saved = Function.__dict__["apply"]
    original = saved.__func__

    def apply(cls: type, *args: Any, **kwargs: Any) -> Any:
        inputs = [a.node for a in tree_leaves((args, kwargs)) if isinstance(a, torch.fx.Proxy)]
        outer_grad = torch.is_grad_enabled()
        result = original(cls, *args, **kwargs)
        if inputs:
            call = FunctionCall(inputs, outer_grad)
            for out in tree_leaves(result):
                if isinstance(out, torch.fx.Proxy) and out.node not in inputs:
                    out.node.meta[FUNCTION_CALL] = call
        return result

    Function.apply = classmethod(apply)  # type: ignore[assignment, method-assign]
    try:
        yield
    finally:
        Function.apply = saved  # type: ignore[method-assign]
