"""What one FSDP2 rank holds in a real training step, measured by PyTorch's ``FSDPMemTracker``.

Run by tests/test_memory.py in a subprocess with a timeout: WORLD ranks on CPU
(gloo, a file store), started by ``torch.multiprocessing``. For each case,
every rank builds the model (seeded), shards it by the case's execorder plan
(``execorder.fsdp.shard``: its units, groups, reshard flags, prefetch lists
and precision; a case named ``...@checkpoint`` also checkpoints each unit's
activations), and takes two training steps (forward, backward of the summed
outputs, the optimizer's step) under
``torch.distributed._tools.fsdp2_mem_tracker.FSDPMemTracker``; rank 0 prints
one JSON line with the peak it measured.

    python tests/fsdp_memory_probe.py STORE_FILE CASES_JSON WORLD
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


def build(case: str) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    name = case.split("@")[0]
    if name == "blocks":
        model: torch.nn.Module = models.MlpBlocks()
        torch.manual_seed(1)
        return model, (torch.randn(64, 256),)
    if name == "llama":
        from hf import tiny_llama

        model = tiny_llama(layers=2, tie=False)
        torch.manual_seed(1)
        return model, (torch.randint(0, 100, (2, 64)),)
    if name == "mixtral":
        from hf import tiny_mixtral

        model = tiny_mixtral(layers=2)
        torch.manual_seed(1)
        return model, (torch.randint(0, 100, (2, 32)),)
    if name == "lora":
        import peft
        from hf import tiny_llama

        config = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
        model = peft.get_peft_model(tiny_llama(tie=False), config)
        torch.manual_seed(1)
        return model, (torch.randint(0, 100, (2, 32)),)
    if name == "moe":
        from moe import MoE

        model = MoE()
        torch.manual_seed(1)
        return model, (torch.randn(128, 16),)
    from encdec import EncoderDecoder

    model = EncoderDecoder()
    torch.manual_seed(1)
    return model, (torch.randint(0, 100, (4, 32)),)


def run(case: str, plan: dict) -> int:
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker

    import execorder.fsdp

    model, args = build(case)
    if case.endswith("checkpoint"):  # each unit but the root and groups, as execorder does
        from torch.distributed._composable import checkpoint

        for unit in plan["units"]:
            if unit["name"] and len(unit["modules"]) == 1:
                checkpoint(model.get_submodule(unit["name"]))
    execorder.fsdp.shard(model, plan)
    optimizer = torch.optim.AdamW(  # as execorder stepped it: foreach, or a loop
        [p for p in model.parameters() if p.requires_grad], foreach=plan["memory"]["foreach"]
    )
    tracker = FSDPMemTracker(model, optimizer)
    tracker.track_inputs(args)
    with tracker:
        models.train_two_steps(model, args, optimizer, after=tracker.reset_mod_stats)
    return int(tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"])


def worker(rank: int, store: str, cases_path: str, world: int) -> None:
    dist.init_process_group("gloo", store=dist.FileStore(store, world), rank=rank, world_size=world)
    try:
        for case, plan in json.loads(Path(cases_path).read_text()).items():
            gc.collect()  # nothing of the case before is left to be counted in this one
            peak = run(case, plan)
            dist.barrier()
            if rank == 0:
                print(json.dumps({"case": case, "peak": peak}), flush=True)
    finally:
        dist.destroy_process_group()
    leave()


if __name__ == "__main__":
    world = int(sys.argv[3])
    mp.spawn(worker, args=(sys.argv[1], sys.argv[2], world), nprocs=world, join=True)
