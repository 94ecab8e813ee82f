"""A mixture-of-experts layer with one module per expert, routed top-1.

Which experts run depends on the router's values: FX cannot trace it; on meta
execorder assumes every expert gets tokens, and on CPU routes for real (experts
no token reached are unused), saying so either way: another batch may differ.

    execorder trace sample_models/moe.py:MoE --input x=float32[4,16]
"""

import torch
from torch import nn


class Expert(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.up = nn.Linear(dim, 2 * dim)
        self.down = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))


class MoE(nn.Module):
    def __init__(self, dim: int = 16, n_experts: int = 8) -> None:
        super().__init__()
        self.router = nn.Linear(dim, n_experts, bias=False)
        self.experts = nn.ModuleList(Expert(dim) for _ in range(n_experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.router(x), dim=-1)
        score, choice = weights.max(dim=-1)
        out = torch.zeros_like(x)
        for index, expert in enumerate(self.experts):
            tokens = (choice == index).nonzero(as_tuple=True)[0]
            if tokens.numel() == 0:
                continue  # no token routed here: this expert gets no gradient
            out[tokens] = expert(x[tokens]) * score[tokens, None]
        return out
