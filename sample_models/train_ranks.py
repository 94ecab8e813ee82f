"""Check, every few steps of a job, that all ranks ran the same forward.

    torchrun --standalone --nproc-per-node 2 sample_models/train_ranks.py

From step 3 on, rank 0's batches have images and the other ranks' do not:
the check at step 4 finds it. (No DDP here, so that the demonstration itself
does not hang; in a real job the same lines go around the DDP or FSDP step.)
"""

import torch
import torch.distributed as dist
from multimodal import TinyVLM, batch

import execorder
import execorder.ranks

CHECK_EVERY = 2


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = TinyVLM()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for step in range(1, 5):
        torch.manual_seed(1000 * step + rank)
        inputs = batch(rank=rank if step >= 3 else 1, world_size=world)
        if step % CHECK_EVERY:
            model(**inputs).logsumexp(-1).mean().backward()
        else:
            with execorder.record(model) as recording:  # this step, recorded
                model(**inputs).logsumexp(-1).mean().backward()
            result = execorder.ranks.compare(recording.report())  # 48 bytes a rank
            if rank == 0:
                print(f"step {step}: {describe(result)}", flush=True)
        optimizer.step()
        optimizer.zero_grad()
    dist.barrier()
    dist.destroy_process_group()


def describe(result: execorder.ranks.RankComparison) -> str:
    if not result.diverged:
        return f"all {result.world_size} ranks ran the same forward"
    first = result.first_divergence
    where = "" if first is None else f" at call #{first.index}: {list(first.by_group)}"
    return f"ranks diverged{where}"


if __name__ == "__main__":
    main()
