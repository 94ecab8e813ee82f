"""Shard torchtitan's Llama3 debug model with torchtitan's own ``apply_fsdp_to_decoder``.

Run by tests/test_titan.py in a subprocess with a timeout: two ranks on CPU
(gloo, a file store), started by ``torch.multiprocessing``. For each case
(tied or not, a reshard policy) rank 0 prints one JSON line: the units
torchtitan made (each FSDP state's modules, by qualified name, in
registration order), whether FSDP2 reshards each after forward (read after
the root's lazy init, as the first forward would settle it), its param and
reduce dtypes, and the bytes each rank holds of it. No forward runs.

    python tests/titan_probe.py STORE_FILE
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "sample_models")]

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from probing import leave  # noqa: E402
from torch.distributed.device_mesh import init_device_mesh  # noqa: E402
from torch.distributed.fsdp import FSDPModule  # noqa: E402
from torchtitan.distributed.fsdp import apply_fsdp_to_decoder  # noqa: E402

WORLD = 2
CASES = [(tied, policy) for tied in (False, True) for policy in ("default", "always", "never")]


def units(model: torch.nn.Module) -> list[dict]:
    """Each FSDP state torchtitan made: its modules, flag, dtypes and bytes a rank holds."""
    model._get_fsdp_state()._lazy_init()
    found: dict[int, dict] = {}
    for name, module in model.named_modules():
        if not isinstance(module, FSDPModule):
            continue
        state = module._get_fsdp_state()
        unit = found.setdefault(id(state), {"modules": []})
        unit["modules"].append(name)
        for group in state._fsdp_param_groups:
            unit["reshard_after_forward"] = group.post_forward_mesh_info is not None
            unit["param_dtype"] = str(group.mp_policy.param_dtype).removeprefix("torch.")
            unit["reduce_dtype"] = str(group.mp_policy.reduce_dtype).removeprefix("torch.")
            unit["shard_bytes"] = sum(
                p._sharded_param_data.numel() * p._sharded_param_data.element_size()
                for p in group.fsdp_params
            )
    return list(found.values())


def worker(rank: int, store_path: str) -> None:
    from titan import llama3

    dist.init_process_group(
        "gloo", store=dist.FileStore(store_path, WORLD), rank=rank, world_size=WORLD
    )
    try:
        mesh = init_device_mesh("cpu", (WORLD,))
        for tied, policy in CASES:
            torch.manual_seed(0)
            model = llama3(tied=tied)
            apply_fsdp_to_decoder(
                model,
                mesh,
                param_dtype=torch.bfloat16,
                reduce_dtype=torch.float32,
                pp_enabled=False,
                reshard_after_forward_policy=policy,
            )
            record = {"tied": tied, "policy": policy, "units": units(model)}
            dist.barrier()
            if rank == 0:
                print(json.dumps(record), flush=True)
    finally:
        dist.destroy_process_group()
    leave()


if __name__ == "__main__":
    mp.spawn(worker, args=(sys.argv[1],), nprocs=WORLD, join=True)
