"""torchtitan's models, as its trainer builds them (torchtitan and triton must be installed).

    execorder fsdp sample_models/titan.py:llama3 --layout torchtitan --input tokens=int64[1,128]
    execorder trace torchtitan.models.llama3:model_registry -i flavor=8B --input tokens=int64[1,64]

The second form names torchtitan's own registry: execorder builds the model of
the ``ModelSpec`` it returns. This file adds one thing torchtitan's flavors do
not have: the small debug model with its output head tied to its embedding.
"""

from __future__ import annotations

import dataclasses

from torch import nn
from torchtitan.models.llama3 import model_registry


def llama3(flavor: str = "debugmodel", tied: bool = False) -> nn.Module:
    """torchtitan's Llama3 of that flavor; ``tied``: its head's weight is its embedding's."""
    config = model_registry(flavor).model
    if tied:
        config = dataclasses.replace(config, enable_weight_tying=True)
    return config.build()
