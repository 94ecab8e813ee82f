"""A tiny vision-language model: its image branch runs only for a batch that has images.

On a real job some ranks get batches without images; those ranks skip the
vision tower, and FSDP or DDP waits on the others forever.

    execorder ranks sample_models/multimodal.py:TinyVLM \
        --inputs sample_models/multimodal.py:batch --nproc 2
"""

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))


class TinyVLM(nn.Module):
    def __init__(self, vocab: int = 100, width: int = 32, patches: int = 48) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.vision = nn.Linear(patches, width)
        self.blocks = nn.ModuleList(Block(width) for _ in range(2))
        self.head = nn.Linear(width, vocab)

    def forward(
        self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = self.embed(input_ids)
        if pixel_values is not None:
            x = torch.cat([self.vision(pixel_values), x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def batch(rank: int = 0, world_size: int = 1) -> dict[str, torch.Tensor]:
    """Rank 0's batch has images; the other ranks' batches are text only."""
    ids = torch.randint(0, 100, (2, 16))
    if rank == 0:
        return {"input_ids": ids, "pixel_values": torch.randn(2, 4, 48)}
    return {"input_ids": ids}
