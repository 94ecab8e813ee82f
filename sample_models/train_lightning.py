"""A Lightning job that DDP fails at step 2, stopped at step 1 by execorder.

    torchrun --standalone --nproc-per-node 2 sample_models/train_lightning.py

The LightningModule has an auxiliary head its loss never uses, and
Lightning's ``strategy="ddp"`` keeps DDP's ``find_unused_parameters=False``:
the second step fails. ``ExecOrderCallback`` records step 1 (the
``training_step`` Lightning runs through DDP, and its backward) and stops
the run there, naming the two parameters, on every rank.
"""

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from execorder.training.lightning import ExecOrderCallback


class Regressor(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(8, 8)
        self.head = nn.Linear(8, 1)
        self.aux_head = nn.Linear(8, 1)  # meant for an auxiliary loss that was never added

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(self.head(torch.relu(self.body(x))).squeeze(-1), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def main() -> None:
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 8), torch.randn(64))
    trainer = L.Trainer(
        accelerator="cpu",  # gloo on CPU; on GPUs, "gpu"
        devices=2,
        strategy="ddp",
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ExecOrderCallback()],
    )
    trainer.fit(Regressor(), torch.utils.data.DataLoader(data, batch_size=4))


if __name__ == "__main__":
    main()
