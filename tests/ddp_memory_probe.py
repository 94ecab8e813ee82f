"""What DDP adds to a replica's training step, measured by PyTorch's ``MemTracker``.

Run by tests/test_memory.py in a subprocess with a timeout: 2 ranks on CPU
(gloo, a file store), started by ``torch.multiprocessing``. For each case,
every rank builds the model (seeded) and takes two training steps (forward,
backward of the summed outputs, AdamW's foreach step), once plain and once
under ``DistributedDataParallel`` built inside the tracker; rank 0 prints one
JSON line with both peaks.

    python tests/ddp_memory_probe.py STORE_FILE
"""

from __future__ import annotations

import gc
import json
import sys
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parent / "sample_models")]

import models  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from probing import leave  # noqa: E402

WORLD = 2
CASES = ("llama", "encdec")


def build(case: str) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    if case == "llama":
        from hf import tiny_llama

        model: torch.nn.Module = tiny_llama(layers=2, tie=True)  # its embedding once
        return model, (torch.randint(0, 100, (2, 32)),)
    from encdec import EncoderDecoder

    return EncoderDecoder(), (torch.randint(0, 100, (4, 32)),)


def peak(case: str, ddp: bool) -> int:
    from torch.distributed._tools.mem_tracker import MemTracker
    from torch.nn.parallel import DistributedDataParallel as DDP

    model, args = build(case)
    tracker = MemTracker()
    tracker.track_external(model, *args)
    with tracker:
        job = DDP(model) if ddp else model  # its buckets are made here
        optimizer = torch.optim.AdamW(model.parameters(), foreach=True)
        models.train_two_steps(job, args, optimizer, after=tracker.reset_mod_stats)
    return int(tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"])


def worker(rank: int, store: str) -> None:
    dist.init_process_group("gloo", store=dist.FileStore(store, WORLD), rank=rank, world_size=WORLD)
    try:
        for case in CASES:
            found = {}
            for ddp in (False, True):
                gc.collect()
                found["ddp" if ddp else "plain"] = peak(case, ddp)
                dist.barrier()
            if rank == 0:
                print(json.dumps({"case": case, **found}), flush=True)
    finally:
        dist.destroy_process_group()
    leave()


if __name__ == "__main__":
    mp.spawn(worker, args=(sys.argv[1],), nprocs=WORLD, join=True)
