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
    try:
        yield
    finally:
        autocast.__init__ = entered
        for cls, found in swapped:
            cls.compiled_flex_attn = found
