"""Why an eager forward failed: the error to raise, and whether the meta device was the cause."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from execorder.backends.common import owner, tensors
from execorder.backends.eager_liveness import own_reads
from execorder.backends.meta import NeedsValues
from execorder.errors import (
    ForwardError,
    MetaDeviceError,
    first_line,
    user_frame,
)
from execorder.recording import ModuleTree

_META = re.compile(r"(?<![a-z])meta(?![a-z])", re.IGNORECASE)  # register_meta, Meta, meta!


def needs_values(exc: BaseException) -> bool:
    """Whether an exception from a forward on the meta device means it needs real values.

    torch's meta-device failures all say so: ``Tensor.item() cannot be called
    on meta tensors``, ``The register_meta function for torch.nonzero()``,
    ``Cannot copy out of meta tensor``, ``attempted to run this operator with
    Meta tensors``, ``not on the expected device meta`` (each one is tested).
    Anything else (a wrong dtype, mismatched shapes, a bug) fails on CPU too.
    """
    while exc is not None:
        if isinstance(exc, NeedsValues):
            return True
        if isinstance(exc, (RuntimeError, NotImplementedError)) and _META.search(str(exc)):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def any_on_meta(
    tree: ModuleTree, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None
) -> bool:
    """Whether any parameter, buffer or input is on meta (walked without recursion)."""
    buffers = [b for m in tree.modules for b in m._buffers.values() if b is not None]
    with own_reads():
        return any(t.is_meta for t in (*tree.params, *buffers, *tensors((args, kwargs or {}))))


def forward_failure(
    model: nn.Module,
    tree: ModuleTree,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    exc: Exception,
    prefix: str = "",
) -> ForwardError:
    """The error for a forward (or its backward) that raised ``exc``."""
    meta = any_on_meta(tree, args, kwargs)
    if meta and needs_values(exc):
        return MetaDeviceError(owner(model), prefix + _values_reason(exc), where=user_frame(exc))
    return ForwardError(
        owner(model),
        prefix + first_line(exc),
        where=user_frame(exc),
        device="meta" if meta else "",
        inputs=[f"{k}={v}" for k, v in describe_inputs(args, kwargs).items()],
    )


def _values_reason(exc: BaseException) -> str:
    """What needed values: the op a meta run names, else the error's first line."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, NeedsValues):
            return str(cause)
        cause = cause.__cause__ or cause.__context__
    return first_line(exc)


def describe(tensor: torch.Tensor) -> str:
    """``dtype[shape]`` of a tensor, as an input size is written."""
    return f"{str(tensor.dtype).removeprefix('torch.')}[{', '.join(str(d) for d in tensor.shape)}]"


def is_input(value: Any) -> bool:
    """A tensor, or an object holding tensors (an attention mask's ``BlockMask``): an input.

    Anything else forward takes is a concrete argument.
    """
    if isinstance(value, torch.Tensor):
        return True
    held = getattr(value, "__dict__", None)
    return isinstance(held, dict) and any(isinstance(v, torch.Tensor) for v in held.values())


def describe_input(value: Any) -> str:
    """``dtype[shape]`` of a tensor; an object holding tensors by its class (and shape)."""
    if isinstance(value, torch.Tensor):
        return describe(value)
    shape = getattr(value, "shape", None)
    if isinstance(shape, tuple) and all(isinstance(d, int) for d in shape):
        return f"{type(value).__name__}[{', '.join(str(d) for d in shape)}]"
    return type(value).__name__


def describe_inputs(args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, str]:
    described = {f"arg{i}": describe_input(a) for i, a in enumerate(args) if is_input(a)}
    described |= {k: describe_input(v) for k, v in kwargs.items() if is_input(v)}
    return described
