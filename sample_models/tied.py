"""A tiny language model whose output projection shares the embedding's weight.

``lm_head.weight`` is the same tensor as ``embed.weight``: execorder reports
it once, under its first name, with the other listed as an alias.

    execorder trace sample_models/tied.py:TiedLM
"""

import torch
from torch import nn


class TiedLM(nn.Module):
    def __init__(self, vocab: int = 32, hidden: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.body = nn.Linear(hidden, hidden)
        self.lm_head = nn.Linear(hidden, vocab, bias=False)
        self.lm_head.weight = self.embed.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(torch.relu(self.body(self.embed(input_ids))))
