"""transformers models of several types, built small from their configs (no download),
checkpointed by transformers' own ``gradient_checkpointing_enable``."""

from __future__ import annotations

import torch
from torch import nn

SMALL = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "vocab_size": 128,
    "head_dim": 8,
}


def checkpointed(model_type: str, reentrant: bool) -> nn.Module:
    """A causal LM of ``model_type``, seeded, in training mode, its blocks checkpointed."""
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **SMALL))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    return model.train()


def ids() -> torch.Tensor:
    return torch.randint(0, SMALL["vocab_size"], (2, 6), generator=torch.Generator().manual_seed(1))
