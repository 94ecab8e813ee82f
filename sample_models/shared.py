"""One layer applied at every depth, under reentrant activation checkpointing.

ALBERT shares its layer across depth; checkpointing each application with
``use_reentrant=True`` (transformers' and peft's usual recipe) makes each a
backward pass of its own, so the layer's parameters get their gradient in
parts. DDP (``find_unused_parameters=False``) raises "Expected to mark a
variable ready only once"; ``use_reentrant=False`` or
``DDP(static_graph=True)`` trains.
"""

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class SharedLayers(nn.Module):
    def __init__(self, vocab: int = 100, dim: int = 16, depth: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.layer = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.head = nn.Linear(dim, vocab)
        self.depth = depth

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        for _ in range(self.depth):
            h = h + checkpoint(self.layer, h, use_reentrant=True)
        return self.head(h)
