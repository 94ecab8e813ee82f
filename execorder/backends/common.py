"""What both backends share: the forward-argument check and a paused collector."""

from __future__ import annotations

import copy
import dataclasses
import gc
import inspect
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from execorder.errors import CallError, ConcreteArgError

# Reads of a tensor's metadata: they move no data and give no gradient, so
# reading them is not a use (peft's LoRA reads lora_A.weight.dtype before it
# calls lora_A; FSDP needs no gather for it either).
METADATA_ATTRS = frozenset(
    {"shape", "dtype", "device", "requires_grad", "ndim", "is_cuda", "layout", "is_meta",
     "is_sparse", "is_quantized"}
)  # fmt: skip
METADATA_METHODS = frozenset(
    {"size", "dim", "ndimension", "numel", "nelement", "is_floating_point", "is_complex",
     "element_size", "stride", "storage_offset", "is_contiguous", "get_device", "__len__"}
)  # fmt: skip


def metadata_functions() -> frozenset[object]:
    """What ``__torch_function__`` receives for a metadata read: getters and methods."""
    getters = [getattr(torch.Tensor, name).__get__ for name in METADATA_ATTRS]
    methods = [getattr(torch.Tensor, name) for name in METADATA_METHODS]
    return frozenset([*getters, *methods])


DEEP = 50
"""Module depth from which a RecursionError is the model's depth, not a bug in forward."""


def tensors(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor inside ``value``, in order, each once.

    Walks tuples (named ones too), lists, sets, mappings (a transformers
    ``ModelOutput`` is one), dataclasses and other objects' attributes (an
    output class of the model's own), nested to any depth, without
    recursion; modules, classes, functions and ``nn.Module``s are not
    looked into.
    """
    seen: set[int] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            if id(item) not in seen:
                seen.add(id(item))
                yield item
            continue
        if id(item) in seen:
            continue
        if isinstance(item, Mapping):
            children: list[Any] = list(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            children = list(item)
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            children = [getattr(item, f.name, None) for f in dataclasses.fields(item)]
        elif _holds_values(item):
            children = list(vars(item).values())
        else:
            continue
        seen.add(id(item))
        stack.extend(reversed(children))


def map_tensors(value: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``value`` with ``fn`` applied to every tensor inside it, where :func:`tensors` finds it.

    What ``torch.utils._pytree`` takes apart (tuples, lists, dicts, a transformers
    ``ModelOutput``) is rebuilt by it; a dataclass or another object holding
    values, a leaf to pytree, is copied (``copy.copy``: no ``__init__`` runs)
    with its attributes mapped, so the caller gets what forward returned but
    for the tensors. An object that cannot be copied is left as it is.
    """
    from torch.utils._pytree import tree_map

    copies: dict[int, Any] = {}

    def leaf(item: Any) -> Any:
        if isinstance(item, torch.Tensor):
            return fn(item)
        if isinstance(item, type) or not (dataclasses.is_dataclass(item) or _holds_values(item)):
            return item
        if id(item) in copies:  # shared, or an attribute that leads back to it
            return copies[id(item)]
        try:
            copied = copies[id(item)] = copy.copy(item)
        except Exception:
            return item
        if dataclasses.is_dataclass(item):
            names = [f.name for f in dataclasses.fields(item) if hasattr(item, f.name)]
        else:
            names = list(vars(item))
        for name in names:
            object.__setattr__(copied, name, tree_map(leaf, getattr(item, name)))
        return copied

    return tree_map(leaf, value)


def _holds_values(item: Any) -> bool:
    """An object of a class of its own whose attributes may hold tensors (not code, not a model)."""
    return hasattr(item, "__dict__") and not isinstance(
        item, (type, types.ModuleType, types.FunctionType, types.MethodType, nn.Module)
    )


def named_leaves(value: Any, leaf: type | tuple[type, ...]) -> Iterator[tuple[str, Any]]:
    """Every ``leaf`` inside ``value`` with its path, in order, each once.

    A path joins keys, field names and indices with dots: ``logits``,
    ``aux.0``, ``1``; ``""`` when ``value`` is itself a leaf. Walks what
    :func:`tensors` walks but sets (a named tuple by its field names).
    """
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, leaf):
            if id(item) not in seen:
                seen.add(id(item))
                yield path, item
            continue
        if id(item) in seen:
            continue
        if isinstance(item, Mapping):
            children: list[tuple[str, Any]] = [(str(k), v) for k, v in item.items()]
        elif isinstance(item, tuple) and hasattr(item, "_fields"):
            children = list(zip(item._fields, item, strict=True))
        elif isinstance(item, (list, tuple)):
            children = [(str(i), v) for i, v in enumerate(item)]
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            children = [(f.name, getattr(item, f.name, None)) for f in dataclasses.fields(item)]
        elif _holds_values(item):
            children = list(vars(item).items())
        else:
            continue
        seen.add(id(item))
        stack.extend((f"{path}.{key}" if path else key, v) for key, v in reversed(children))


def owner(model: nn.Module) -> str:
    """``Class.forward``: how errors name the forward being traced."""
    return f"{type(model).__name__}.forward"


def check_forward_args(model: nn.Module, names: Iterable[str]) -> None:
    """Check that each name is an argument of ``model.forward``.

    Raises:
        ConcreteArgError: Naming the unknown argument and the valid names.
    """
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    valid = [p.name for p in params if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    for name in names:
        if name not in valid:
            raise ConcreteArgError(owner(model), name, valid)


def check_call(model: nn.Module, args: tuple[object, ...], kwargs: Iterable[str]) -> None:
    """Check that ``model(*args, **kwargs)`` binds to ``forward``, before it runs.

    Raises:
        ConcreteArgError: For a name that is not an argument of forward.
        CallError: For too many positional arguments, an argument given twice,
            or a required argument without a value.
    """
    names = list(kwargs)
    check_forward_args(model, names)
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return
    kinds = inspect.Parameter
    positional = [
        p for p in params if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)
    ]
    if len(args) > len(positional) and not any(p.kind is kinds.VAR_POSITIONAL for p in params):
        raise CallError(owner(model), extra=len(args) - len(positional), takes=len(positional))
    by_position = {p.name for p in positional[: len(args)]}
    twice = [n for n in names if n in by_position]
    if twice:
        raise CallError(owner(model), twice=twice)
    given = by_position | set(names)
    missing = [
        p.name
        for p in params
        if p.default is kinds.empty
        and p.kind not in (kinds.VAR_POSITIONAL, kinds.VAR_KEYWORD)
        and p.name not in given
    ]
    if missing:
        raise CallError(owner(model), missing=missing)


def defaults_used(
    model: nn.Module,
    args: tuple[object, ...],
    kwargs: Iterable[str],
    *,
    function: Any = None,
) -> dict[str, Any]:
    """forward's (or ``function``'s) arguments the call leaves to their defaults, with values."""
    try:
        params = inspect.signature(function or model.forward).parameters.values()
    except (TypeError, ValueError):
        return {}
    kinds = inspect.Parameter
    positional = [
        p for p in params if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)
    ]
    given = {p.name for p in positional[: len(args)]} | set(kwargs)
    return {
        p.name: p.default for p in params if p.default is not kinds.empty and p.name not in given
    }


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for a trace (both backends).

    A trace allocates many long-lived objects (FX nodes and proxies, recorded
    events, report records); each full collection rescans them all, which
    makes tracing super-linear in model size and adds pauses to eager runs.
    Nothing collectable is lost: the collector resumes afterwards.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
