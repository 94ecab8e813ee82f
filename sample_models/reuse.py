"""A model that calls one block several times and shares a module under two names.

``block`` runs ``repeats`` times; ``proj`` and ``out`` are the same module.

    execorder trace sample_models/reuse.py:Reuse --init repeats=3
"""

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.scale = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc(x)) * self.scale


class Reuse(nn.Module):
    def __init__(self, width: int = 8, repeats: int = 2) -> None:
        super().__init__()
        self.repeats = repeats
        self.block = Block(width)
        self.proj = nn.Linear(width, width)
        self.out = self.proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.repeats):
            x = self.block(x)
        return self.out(self.proj(x))
