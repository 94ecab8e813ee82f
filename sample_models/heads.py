"""A model with an auxiliary head, as multi-task and distillation models have one.

Its forward returns both heads' outputs. A loss on ``logits`` alone leaves
``aux_head`` without a gradient, and DDP (``find_unused_parameters=False``)
fails on it at the second step; a loss that reads ``aux`` too trains.
"""

import torch
from torch import nn


class WithAuxHead(nn.Module):
    def __init__(self, dim: int = 16, classes: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dim, dim), nn.ReLU())
        self.head = nn.Linear(dim, classes)
        self.aux_head = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.body(x)
        return {"logits": self.head(h), "aux": self.aux_head(h)}
