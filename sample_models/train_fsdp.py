"""Train the encoder-decoder with FSDP2 (fully_shard), sharded by execorder's plan.

    execorder fsdp sample_models/encdec.py:EncoderDecoder --input int64[2,16]@0:100 \
        --backward -f json -o plan.json
    torchrun --standalone --nproc-per-node 2 sample_models/train_fsdp.py plan.json

The gloo backend runs on CPU; use nccl (and move the model to the GPU) on GPUs.
"""

import json
import sys

import torch
import torch.distributed as dist
from encdec import EncoderDecoder

import execorder.fsdp


def main(plan_path: str) -> None:
    dist.init_process_group("gloo")
    torch.manual_seed(0)  # the same model on every rank
    model = EncoderDecoder()
    with open(plan_path, encoding="utf-8") as file:
        plan = json.load(file)
    # fully_shard on each unit, innermost first, then the root; then the prefetch lists.
    execorder.fsdp.shard(model, plan)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(2):
        ids = torch.randint(0, 100, (2, 16))
        loss = model(ids).logsumexp(-1).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    if dist.get_rank() == 0:
        units = len(plan["units"])
        print(f"rank 0 of {dist.get_world_size()}: {units} units sharded by the plan, 2 steps done")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
