"""LayerDrop, as transformers' wav2vec2 and HuBERT train: each layer skipped at random."""

import torch
from torch import nn


class LayerDrop(nn.Module):
    def __init__(self, layers: int = 4, layerdrop: float = 0.1) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(16, 16) for _ in range(layers))
        self.head = nn.Linear(16, 4)
        self.layerdrop = layerdrop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            if self.training and torch.rand([]) < self.layerdrop:
                continue  # skipped this step: its parameters get no gradient
            x = torch.relu(layer(x))
        return self.head(x)
