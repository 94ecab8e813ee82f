"""Kernels with no meta implementation, stood in for on the meta device by ones of the same shapes.

torchtitan's ``FlexAttention`` runs a compiled ``flex_attention``, which has
no meta kernel ("FlexAttention is only supported on CUDA, CPU, HPU, or MPS
devices"). On meta it is stood in for by ``scaled_dot_product_attention``:
the same output shape and dtype (the query's batch, heads and length, the
value's head size), computed from the query, key and value as flex
attention's is, and its log-sum-exp, when asked for, of the query's batch,
heads and length. Which modules run, in which order, which parameters
forward uses and which get gradients do not depend on attention's values, so
the recording is the one a real run makes. A ``score_mod`` may read tensors
of its own: with one, nothing is stood in for, and the meta run fails as
flex attention does, to be run on CPU.

``scaled_dot_product_attention`` on meta takes its math path, which makes
the full attention matrix and saves it for backward, where a real device
runs a fused kernel that makes neither. Where CPU would choose its fused
flash kernel for the same shapes and dtypes, it is run on meta too: the
same outputs, the same tensors saved for backward, so a step's memory on
meta is the memory of the step on CPU. A recomputation in backward
(activation checkpointing) takes the same kernel as its forward.

``torch.autocast`` has no meta device type (DeepSeek-V3's router computes
its gate under ``torch.autocast(device_type=x.device.type, ...)``): on meta
it is entered disabled. Inside it, ops keep the dtypes of their inputs where
a real device might compute in another; which modules run and which
parameters they use do not change.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode


def _flex_stand_in(original: Any) -> Any:
    def compiled_flex_attn(q: Any, k: Any, v: Any, **options: Any) -> Any:
        if not q.is_meta or options.get("score_mod") is not None:
            return original(q, k, v, **options)
        from torch.nn.attention.flex_attention import AuxOutput

        out = F.scaled_dot_product_attention(
            q, k, v, scale=options.get("scale"), enable_gqa=bool(options.get("enable_gqa"))
        )
        wanted = options.get("return_aux")
        lse = out.float().sum(-1) if wanted is not None and wanted.lse else None
        return out, AuxOutput(lse=lse)

    return compiled_flex_attn


FLASH = 1  # torch._fused_sdp_choice's number for the flash attention kernel
_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


def _ghost(tensor: Any) -> Any:
    """A CPU tensor of ``tensor``'s shape, dtype and ``requires_grad`` (the kernel CPU chooses
    depends on it: no flash kernel for a mask that needs a gradient), last stride 1, and next
    to no memory."""
    rows = torch.empty(tensor.shape[-1] if tensor.dim() else 1, dtype=tensor.dtype)
    strides = (0,) * (tensor.dim() - 1) + (1,) if tensor.dim() else ()
    ghost = rows.as_strided(tensor.shape, strides)
    return ghost.requires_grad_(tensor.requires_grad and torch.is_grad_enabled())


def _attention(original: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``scaled_dot_product_attention`` on meta through the fused kernel CPU would choose,
    however its arguments are passed (diffusers' attention dispatcher names them all)."""
    given = {**dict(zip(_SDPA_ARGS, args, strict=False)), **kwargs}
    if len(args) > len(_SDPA_ARGS) or not {"query", "key", "value"} <= given.keys() <= set(
        _SDPA_ARGS
    ):
        return original(*args, **kwargs)
    q, k, v = given["query"], given["key"], given["value"]
    if not (q.is_meta and k.is_meta and v.is_meta) or q.dim() != 4:
        return original(*args, **kwargs)
    mask, dropout = given.get("attn_mask"), float(given.get("dropout_p", 0.0))
    causal, scale = bool(given.get("is_causal", False)), given.get("scale")
    gqa = bool(given.get("enable_gqa")) and k.shape[1] != q.shape[1]
    if mask is not None and not mask.is_meta:
        mask = mask.to("meta")
    ghost_mask = _ghost(mask) if mask is not None else None
    choice = torch._fused_sdp_choice(
        _ghost(q), _ghost(k), _ghost(v), ghost_mask, dropout, causal, scale=scale, enable_gqa=gqa
    )
    if choice != FLASH:
        return original(*args, **kwargs)
    out, _ = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, v, dropout, causal, attn_mask=mask, scale=scale
    )
    return out


class FusedAttention(TorchFunctionMode):
    """Attention on meta as CPU runs it, however the model reached it.

    Autograd runs backward without torch function modes, so a recomputation
    in backward (activation checkpointing) would not pass through this mode:
    :func:`meta_stand_ins` also swaps ``F.scaled_dot_product_attention``, so
    that forward and its recomputation take the same kernel.
    """

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func is not _SDPA:
            return func(*args, **(kwargs or {}))
        return _attention(func, args, kwargs or {})


_SDPA = F.scaled_dot_product_attention


def _swapped_attention(*args: Any, **kwargs: Any) -> Any:
    return _attention(_SDPA, args, kwargs)


@contextmanager
def meta_stand_ins(model: nn.Module) -> Iterator[None]:
    """Stand in, meanwhile, for the kernels of ``model``'s modules that meta cannot run."""
    swapped: list[tuple[Any, staticmethod[Any, Any]]] = []
    classes: set[Any] = {type(m) for m in model.modules()}
    for cls in classes:
        found = cls.__dict__.get("compiled_flex_attn")
        ours = cls.__name__ == "FlexAttention" and cls.__module__.startswith("torchtitan.")
        if ours and isinstance(found, staticmethod):
            swapped.append((cls, found))
            cls.compiled_flex_attn = staticmethod(_flex_stand_in(found.__func__))
    autocast: Any = torch.amp.autocast_mode.autocast
    entered = autocast.__init__

    def disabled_on_meta(self: Any, device_type: str, *args: Any, **kwargs: Any) -> None:
        if device_type != "meta":
            entered(self, device_type, *args, **kwargs)
            return
        entered(self, "cpu", enabled=False)

    autocast.__init__ = disabled_on_meta
    F.scaled_dot_product_attention = _swapped_attention
    try:
        with FusedAttention():
            yield
    finally:
        F.scaled_dot_product_attention = _SDPA
        autocast.__init__ = entered
        for cls, found in swapped:
            cls.compiled_flex_attn = found
