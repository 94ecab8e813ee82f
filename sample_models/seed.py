"""The model from PyTorch's own execution-order tracer test.

``weight_unused`` is never used; ``layer1`` and ``weight2`` run only with
``run_all_layers=True``; ``layer0`` is called twice on that branch.

    execorder trace sample_models/seed.py:Model --concrete run_all_layers=true
"""

import torch
from torch import nn


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight1 = nn.Parameter(torch.randn(6, 6))
        self.weight2 = nn.Parameter(torch.randn(6, 6))
        self.weight_unused = nn.Parameter(torch.randn(2, 2))
        self.layer0 = nn.Linear(6, 6)
        self.layer1 = nn.Linear(6, 6, bias=False)
        self.layer2 = nn.Sequential(
            nn.Linear(6, 3, bias=False),
            nn.ReLU(),
            nn.Linear(3, 6, bias=False),
        )
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor, run_all_layers: bool) -> torch.Tensor:
        z = self.relu(self.layer0(x))
        z = self.relu(self.layer2(z))
        z = z @ self.weight1
        if run_all_layers:
            z = self.relu(self.layer1(z))
            z = z @ self.weight2
            # layer0 runs a second time: its call is recorded twice.
            z = self.relu(self.layer0(x))
        return z
