"""Activation checkpointing: seeing into the blocks torch recomputes in backward.

Reentrant checkpointing (``torch.utils.checkpoint(..., use_reentrant=True)``,
transformers' and peft's usual recipe) runs its block under ``no_grad`` in
forward and runs it again, with grad, in backward. Its autograd node stands
for the whole block: a walk of the forward graph stops there, and the
block's parameters look dead although backward gives them gradients.

:func:`recompute` does what torch's backward does for such a node (the same
saved inputs, random state and autocast), so a graph walk can go on inside;
the buffers a recompute changes (a BatchNorm's running statistics) are put
back, since no real backward ran. The non-reentrant flavour records the
block's graph in forward, so it needs nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import CheckpointFunction, detach_variable, set_device_states


def is_torch_checkpoint(fn: Any) -> bool:
    """Whether an autograd node is torch's own reentrant checkpoint's."""
    return getattr(fn, "_forward_cls", None) is CheckpointFunction


def is_reentrant(fn: Any) -> bool:
    """Whether an autograd node is a reentrant checkpoint's: torch's
    (``CheckpointFunctionBackward``), or a custom Function of its shape, whose
    ``ctx`` keeps the ``run_function`` its backward runs again on the saved
    inputs (Megatron-LM's and DeepSpeed's activation checkpointing)."""
    if is_torch_checkpoint(fn):
        return True
    return hasattr(fn, "_forward_cls") and callable(getattr(fn, "run_function", None))


def _module_of(function: Any) -> nn.Module | None:
    """The module a checkpointed function runs, when it is one (or its bound method)."""
    while isinstance(function, functools.partial):
        function = function.func
    owner = function if isinstance(function, nn.Module) else getattr(function, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


@contextmanager
def _buffers_kept(module: nn.Module | None) -> Iterator[None]:
    """Put back the buffers of ``module`` after the block (nothing to do without one)."""
    if module is None:
        yield
        return
    saved = [(buffer, buffer.detach().clone()) for buffer in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def recompute(fn: Any) -> tuple[tuple[Any, ...], tuple[Any, ...], tuple[int, ...]]:
    """Run a reentrant checkpoint's block again, with grad, as its backward would.

    A custom Function of torch's shape runs its ``run_function`` on its saved
    tensors, as such a Function's backward does: under the CPU random state
    its forward kept as ``ctx.fwd_cpu_rng_state`` (Megatron-LM's and
    DeepSpeed's name for it), and the global one put back after.

    Args:
        fn: A node for which :func:`is_reentrant` holds.

    Returns:
        The block's outputs (a tuple), its detached inputs (the leaves the
        new graph ends at, in the order of the block's arguments), and for
        each tensor argument of the Function, in order, its detached input.
    """
    if not is_torch_checkpoint(fn):
        state = getattr(fn, "fwd_cpu_rng_state", None)  # Megatron-LM's, DeepSpeed's name
        with torch.random.fork_rng(devices=[]), _buffers_kept(_module_of(fn.run_function)):
            if isinstance(state, torch.Tensor):
                torch.set_rng_state(state)
            detached = detach_variable(tuple(fn.saved_tensors))
            with torch.enable_grad():
                outputs = fn.run_function(*detached)
        block = outputs if isinstance(outputs, tuple) else (outputs,)
        return block, detached, tuple(range(len(detached)))
    inputs = list(fn.inputs)
    for tensor, index in zip(fn.saved_tensors, fn.tensor_indices, strict=True):
        inputs[index] = tensor
    devices = fn.fwd_devices if fn.preserve_rng_state and fn.had_device_in_fwd else []
    rng = torch.random.fork_rng(
        devices=devices, enabled=fn.preserve_rng_state, device_type=fn.device_type
    )
    with rng, _buffers_kept(_module_of(fn.run_function)):
        if fn.preserve_rng_state:
            torch.set_rng_state(fn.fwd_cpu_state)
            if fn.had_device_in_fwd:
                set_device_states(fn.fwd_devices, fn.fwd_device_states, device_type=fn.device_type)
        detached = detach_variable(tuple(inputs))
        device_autocast = (
            torch.amp.autocast(device_type=fn.device_type, **fn.device_autocast_kwargs)
            if torch.amp.is_autocast_available(fn.device_type)
            else nullcontext()
        )
        cpu_autocast = torch.amp.autocast("cpu", **fn.cpu_autocast_kwargs)
        with torch.enable_grad(), device_autocast, cpu_autocast:
            outputs = fn.run_function(*detached)
    block = outputs if isinstance(outputs, tuple) else (outputs,)
    return block, detached, tuple(fn.tensor_indices)


@contextmanager
def blocks_logged(on_block: Callable[[bool, bool], None]) -> Iterator[None]:
    """Tell ``on_block(True, needs)`` when a reentrant checkpoint's block starts running in
    forward, ``on_block(False, needs)`` when it ends: the calls between are made again in
    backward, if ``needs``: whether a tensor input of the block needs grad (torch never
    recomputes a block none of whose inputs does).

    ``CheckpointFunction.forward`` is wrapped for the duration, and restored
    exactly on exit, also when forward raises.
    """
    saved = CheckpointFunction.__dict__["forward"]
    block = saved.__func__

    def forward(ctx: Any, run_function: Any, preserve_rng_state: bool, *args: Any) -> Any:
        needs = any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)
        on_block(True, needs)
        try:
            return block(ctx, run_function, preserve_rng_state, *args)
        finally:
            on_block(False, needs)

    CheckpointFunction.forward = staticmethod(forward)  # type: ignore[method-assign]
    try:
        yield
    finally:
        CheckpointFunction.forward = saved  # type: ignore[method-assign]


_SPIED = "_execorder_spied"
"""The attribute of a :func:`contexts_seen` spy that holds the initializer it spies on."""


@contextmanager
def contexts_seen(cls: type, seen: list[Any]) -> Iterator[None]:
    """Note in ``seen`` the ``ctx`` each call of ``cls`` gets, as autograd makes it (before
    ``forward``, whether ``forward`` or ``setup_context`` takes it).

    The ``ctx`` class's initializer is spied on, not ``forward``: autograd binds the
    keyword arguments of ``apply`` by ``forward``'s own signature.
    """
    made = cls._backward_cls  # type: ignore[attr-defined]
    own = made.__dict__.get("__init__")
    init = getattr(own, _SPIED, None) or made.__init__  # a call nested in one of the same class

    def spy(ctx: Any, *args: Any, **kwargs: Any) -> None:
        seen.append(ctx)
        init(ctx, *args, **kwargs)

    setattr(spy, _SPIED, init)
    made.__init__ = spy
    try:
        yield
    finally:
        if own is None:
            del made.__init__
        else:
            made.__init__ = own


def recomputes(seen: list[Any]) -> bool:
    """Whether a Function call whose ``ctx`` was ``seen`` is a checkpoint of torch's shape:
    its ``ctx`` keeps the ``run_function`` its backward runs again."""
    return bool(seen) and callable(getattr(seen[0], "run_function", None))


@contextmanager
def own_blocks_logged(
    mark: Callable[[], int],
    recomputed: Callable[[int, type], None],
    ran: Callable[[int, type, tuple[Any, ...]], None] = lambda first, cls, args: None,
) -> Iterator[None]:
    """Tell ``recomputed(mark(), cls)`` after each call of a checkpoint Function of the model's
    own (Megatron-LM's, DeepSpeed's: :func:`recomputes`), ``mark()`` taken before it ran;
    ``ran(mark(), cls, arguments)`` (positional, then keyword) after any other Function
    called with grad on and an argument that requires grad (its ``backward`` will run).

    What such a Function is shows only in its ``ctx`` once its ``forward`` ran,
    so its block is told afterwards; torch's own (``CheckpointFunction``) is
    :func:`blocks_logged`'s. ``Function.apply`` is wrapped for the duration,
    and restored exactly on exit, also when forward raises.
    """
    Function = torch.autograd.Function
    saved = Function.__dict__["apply"]
    original = saved.__func__

    def apply(cls: type, *args: Any, **kwargs: Any) -> Any:
        if issubclass(cls, CheckpointFunction):
            return original(cls, *args, **kwargs)
        first = mark()
        seen: list[Any] = []
        passed = (*args, *kwargs.values())  # autograd's inputs: the arguments themselves
        backward_runs = torch.is_grad_enabled() and any(
            isinstance(a, torch.Tensor) and a.requires_grad for a in passed
        )
        with contexts_seen(cls, seen):
            result = original(cls, *args, **kwargs)
        if recomputes(seen):
            recomputed(first, cls)
        elif backward_runs:
            ran(first, cls, passed)
        return result

    Function.apply = classmethod(apply)  # type: ignore[assignment, method-assign]
    try:
        yield
    finally:
        Function.apply = saved  # type: ignore[method-assign]


# -- FX ---------------------------------------------------------------------

REGION = "execorder_checkpoint"
"""``node.meta`` key: the innermost reentrant checkpoint region a node was traced in."""


class Region:
    """One reentrant checkpoint call, as FX traced it.

    Attributes:
        inputs: The nodes of the block's tensor arguments.
        outer_grad: Whether grad mode was on where the block was called.
        parent: The region this one is nested in, if any.
    """

    def __init__(self, inputs: list[Any], outer_grad: bool, parent: Region | None) -> None:
        self.inputs, self.outer_grad, self.parent = inputs, outer_grad, parent


class Regions:
    """The reentrant checkpoint regions of one FX trace; ``current`` is the innermost open one.

    Attributes:
        on_block: Told ``True`` when a block starts, ``False`` when it ends
            (as :func:`blocks_logged` tells an eager recording).
        count: How many module calls were recorded so far.
        recomputed_since: Told, after a checkpoint Function of the model's
            own ran, the ``count()`` from before it and the Function's name:
            those calls are recomputed (as :func:`own_blocks_logged` tells an
            eager recording).
        opened: Whether any block was traced.
    """

    def __init__(
        self,
        on_block: Callable[[bool], None] | None = None,
        count: Callable[[], int] = lambda: 0,
        recomputed_since: Callable[[int, str], None] = lambda first, by: None,
    ) -> None:
        self.current: Region | None = None
        self.on_block = on_block
        self.count, self.recomputed_since = count, recomputed_since
        self.opened = False


@contextmanager
def regions_traced(regions: Regions) -> Iterator[Regions]:
    """Trace reentrant checkpoints as backward recomputes them, and mark their regions.

    For the duration, ``CheckpointFunction.apply`` runs the block itself, with
    grad on (as the recompute in backward does; FX computes nothing, so
    nothing is saved), inside a :class:`Region` that ``create_node`` stamps on
    each node. Restored exactly on exit, also when tracing raises.
    """
    import torch.fx

    saved = CheckpointFunction.__dict__.get("apply")

    def apply(cls: type, run_function: Any, preserve_rng_state: bool, *args: Any) -> Any:
        nodes = [a.node for a in args if isinstance(a, torch.fx.Proxy)]
        region = Region(nodes, torch.is_grad_enabled(), regions.current)
        regions.current, regions.opened = region, True
        if regions.on_block is not None:
            regions.on_block(True)
        try:
            with torch.enable_grad():
                return run_function(*args)
        finally:
            regions.current = region.parent
            if regions.on_block is not None:
                regions.on_block(False)

    CheckpointFunction.apply = classmethod(apply)  # type: ignore[assignment, method-assign]
    try:
        yield regions
    finally:
        if saved is None:
            del CheckpointFunction.apply
        else:
            CheckpointFunction.apply = saved  # type: ignore[method-assign]
