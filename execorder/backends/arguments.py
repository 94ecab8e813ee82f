"""Containers among a module call's arguments, as FSDP2 copies them, and writes into them.

FSDP2 hooks a unit's backward through its inputs: before the unit's forward
it replaces each tensor that needs grad in the arguments, at any depth in
lists, tuples, dicts and dataclasses, rebuilding every container on the way
(``replace_grad_tensors``). A unit that writes into such a list, dict or
dataclass (a cache of activations filled chunk by chunk, as the Wan VAE's
causal convolutions keep theirs) writes into the copy: its caller never
sees the write, and the job computes something else, with no error.

Each backend says what needs grad: eager, a tensor that requires it; FX, any
traced value (whether it depends on a trainable parameter is known once the
trace is done). A call is checked only while grad is on, as FSDP2 hooks
nothing otherwise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

Held = list[tuple[Any, tuple[Any, ...], list[Any]]]
"""Mutable containers a call was passed: each, what it held then, and what needs grad in it."""

DEPTH = 32  # as deep as a container is looked into (a list holding itself ends here)


def held(
    args: tuple[Any, ...], kwargs: dict[str, Any], needs: Callable[[Any], bool]
) -> Held | None:
    """The lists, dicts and dataclasses among a call's arguments that hold, at any depth, a
    value ``needs`` says needs grad; None when there are none. A call of tensors alone (the
    usual one) pays a type check an argument."""
    found: Held | None = None
    for value in (*args, *kwargs.values()) if kwargs else args:
        if isinstance(value, torch.Tensor) or not _container(value):
            continue
        if not torch.is_grad_enabled():  # FSDP2 hooks no backward then: nothing copied
            return None
        found = found if found is not None else []
        _holding(value, found, needs, 0)
    return found or None


def written(found: Held) -> list[Any]:
    """What needed grad in the containers a call changed (empty: it changed none)."""
    changed = []
    for value, before, leaves in found:
        now = _contents(value)
        if len(now) != len(before):
            changed += leaves
        elif isinstance(value, dict):  # its items, key and value, by identity
            if any(a[0] is not b[0] or a[1] is not b[1] for a, b in zip(now, before, strict=True)):
                changed += leaves
        elif any(a is not b for a, b in zip(now, before, strict=True)):
            changed += leaves
    return changed


def _container(value: Any) -> bool:
    return isinstance(value, (list, tuple, dict)) or (
        dataclasses.is_dataclass(value) and not isinstance(value, type)
    )


def _contents(value: Any) -> tuple[Any, ...]:
    """What a container holds, by identity: its items, its values, its fields' values."""
    if isinstance(value, (list, tuple)):
        return tuple(value)
    if isinstance(value, dict):
        return tuple(value.items())
    return tuple(getattr(value, f.name, None) for f in dataclasses.fields(value))


def _holding(value: Any, found: Held, needs: Callable[[Any], bool], depth: int) -> list[Any]:
    """What needs grad in ``value``, at any depth (lists, tuples, dicts and dataclasses, as
    FSDP2 looks); each mutable container holding some is added to ``found``."""
    if not _container(value):
        return [value] if needs(value) else []
    if depth > DEPTH:
        return []
    inside = _contents(value)
    items = (v for _, v in inside) if isinstance(value, dict) else inside
    leaves = [leaf for item in items for leaf in _holding(item, found, needs, depth + 1)]
    if leaves and not isinstance(value, tuple):
        found.append((value, inside, leaves))
    return leaves
