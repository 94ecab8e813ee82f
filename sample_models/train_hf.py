"""A transformers Trainer job that DDP fails at step 2, stopped at step 1 by execorder.

    torchrun --standalone --nproc-per-node 2 sample_models/train_hf.py
    torchrun --standalone --nproc-per-node 2 sample_models/train_hf.py --without-execorder

The model has an auxiliary head its loss never uses. Under DDP with
``find_unused_parameters=False`` (what the Trainer sets for a model with
activation checkpointing, or with ``ddp_find_unused_parameters=False``), the
second step raises "Expected to have finished reduction in the prior
iteration". ``ExecOrderCallback`` records step 1 and stops the run there,
naming the two parameters, on every rank.
"""

import sys
import tempfile

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer, TrainingArguments

from execorder.training.transformers import ExecOrderCallback


class Regressor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(8, 8)
        self.head = nn.Linear(8, 1)
        self.aux_head = nn.Linear(8, 1)  # meant for an auxiliary loss that was never added

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": F.mse_loss(self.head(torch.relu(self.body(x))).squeeze(-1), labels)}


class Pairs(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(i)
        return {"x": torch.randn(8, generator=g), "labels": torch.randn((), generator=g)}


def main() -> None:
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(),
        use_cpu=True,  # gloo on CPU; on GPUs leave both out
        ddp_backend="gloo",
        ddp_find_unused_parameters=False,
        per_device_train_batch_size=4,
        max_steps=3,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
    )
    callbacks = [] if "--without-execorder" in sys.argv else [ExecOrderCallback()]
    torch.manual_seed(0)
    trainer = Trainer(Regressor(), args, train_dataset=Pairs(), callbacks=callbacks)
    trainer.train()


if __name__ == "__main__":
    main()
