"""What execorder knows of the frameworks models come from: how they build, what inputs they take.

- **torchtitan**: a target may name its model registry
  (``torchtitan.models.llama3:model_registry`` with ``--init flavor=8B``): the
  ``ModelSpec`` it returns, or a model ``Config``, is built into its model.
  Its decoders take ``positions`` and ``attention_masks`` besides the
  tokens; its trainer makes them from the batch (``positions`` from the data
  loader, the masks by ``model.get_attention_masks(positions=...)``), and so
  does :func:`trainer_inputs` for inputs given without them: positions
  counting each sequence from 0, one document a row.
- **transformers**: a model given no inputs runs on its own example inputs,
  ``dummy_inputs`` (:func:`example_inputs`).

No framework is imported here: a model is recognised by what it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from execorder.report import InputSource


def _from_torchtitan(obj: Any) -> bool:
    return type(obj).__module__.split(".")[0] == "torchtitan"


def built_model(obj: Any) -> Any:
    """A torchtitan ``ModelSpec`` or model ``Config`` built into its model; anything else as is."""
    if not _from_torchtitan(obj) or isinstance(obj, nn.Module):
        return obj
    config = getattr(obj, "model", obj)  # a ModelSpec holds the model's Config
    build = getattr(config, "build", None)
    return build() if callable(build) else obj


def example_inputs(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """A transformers model's own example inputs (``dummy_inputs``), or None without them."""
    if not hasattr(type(model), "main_input_name"):
        return None
    try:
        dummy = model.dummy_inputs
    except Exception:  # a property of the model's: any failure means it has none to give
        return None
    if not isinstance(dummy, Mapping) or not dummy:
        return None
    if not all(isinstance(v, torch.Tensor) for v in dummy.values()):
        return None
    return {str(k): v for k, v in dummy.items()}


def is_torchtitan_decoder(model: nn.Module) -> bool:
    """A torchtitan decoder: its ``forward(tokens, positions, attention_masks)`` and mask maker."""
    return _from_torchtitan(model) and hasattr(model, "get_attention_masks")


def trainer_inputs(
    model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any], dict[str, InputSource]]:
    """Forward's arguments with what torchtitan's trainer adds to the tokens, and what was added.

    ``positions`` (when not given): each row counts its tokens from 0, one
    document a row, as its data loader gives them for unpacked sequences.
    ``attention_masks`` (when not given): ``model.get_attention_masks(
    positions=...)``, as its trainer calls it; the block mask is made on CPU
    by the same ``create_block_mask``, run eagerly rather than compiled (the
    same mask, without seconds of compiling). Anything else is returned as
    it is.
    """
    if not is_torchtitan_decoder(model):
        return args, kwargs, {}
    tokens = args[0] if args else kwargs.get("tokens")
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
        return args, kwargs, {}
    kwargs, made = dict(kwargs), {}
    positions = args[1] if len(args) > 1 else kwargs.get("positions")
    if positions is None:
        batch, length = tokens.shape
        positions = torch.arange(length, device=tokens.device).expand(batch, length)
        kwargs["positions"], made["positions"] = positions, InputSource.TRAINER
    if len(args) < 3 and kwargs.get("attention_masks") is None:
        real = positions if not positions.is_meta else torch.arange(positions.shape[1])
        with _eager_block_masks():
            try:
                masks = model.get_attention_masks(  # type: ignore[operator]
                    positions=real.expand(*positions.shape)
                )
            except TypeError:  # an attention without masks (torchtitan raises TypeError)
                masks = None
        if masks is not None:
            kwargs["attention_masks"], made["attention_masks"] = masks, InputSource.TRAINER
    return args, kwargs, made


@contextmanager
def _eager_block_masks() -> Any:
    """torchtitan's compiled ``create_block_mask`` swapped for the function itself, meanwhile."""
    import sys

    module: Any = sys.modules.get("torchtitan.models.common.attention")
    if module is None or not hasattr(module, "_compiled_create_block_mask"):
        yield
        return
    from torch.nn.attention.flex_attention import create_block_mask

    compiled = module._compiled_create_block_mask
    module._compiled_create_block_mask = create_block_mask
    try:
        yield
    finally:
        module._compiled_create_block_mask = compiled
