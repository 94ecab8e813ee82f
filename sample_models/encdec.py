"""An encoder-decoder whose decoder is registered before its encoder.

Forward runs the encoder's blocks, then the decoder's; ``named_modules()``
lists the decoder first. FSDP2 prefetch lists built from registration order
("block i prefetches block i+1") therefore prefetch the wrong blocks.

    execorder fsdp sample_models/encdec.py:EncoderDecoder --input int64[2,16]@0:100
"""

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, 4 * width)
        self.down = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.relu(self.up(self.norm(x))))


class EncoderDecoder(nn.Module):
    def __init__(self, vocab: int = 100, width: int = 32, depth: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.decoder = nn.ModuleList(Block(width) for _ in range(depth))
        self.encoder = nn.ModuleList(Block(width) for _ in range(depth))
        self.head = nn.Linear(width, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for block in self.encoder:
            x = block(x)
        memory = x
        for block in self.decoder:
            x = block(x + memory)
        return self.head(x)
