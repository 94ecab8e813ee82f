"""Shard torchtitan's DeepSeek-V3 debug model (8 experts a block) with torchtitan's own
``apply_fsdp_to_decoder`` and with execorder's plan, over a fake process group.

Run by tests/test_titan.py in a subprocess (the fake process group is global
state). For each world size it prints one JSON line: the bytes a rank holds
of each unit as torchtitan shards it (read from FSDP2's own states), and each
parameter's shard shape and placement under torchtitan's sharding and under
``execorder.fsdp.shard`` of the plan. With more ranks than experts torchtitan
shards the experts' weights on dim 1. No forward runs; everything is on meta.

    python tests/titan_experts_probe.py WORLD_SIZE ...
"""

from __future__ import annotations

import json
import sys
import warnings

warnings.filterwarnings("ignore")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.distributed.device_mesh import init_device_mesh  # noqa: E402
from torch.distributed.fsdp import FSDPModule  # noqa: E402
from torch.testing._internal.distributed.fake_pg import FakeStore  # noqa: E402
from torchtitan.distributed.fsdp import apply_fsdp_to_decoder  # noqa: E402
from torchtitan.models.deepseek_v3 import model_registry  # noqa: E402

import execorder.fsdp  # noqa: E402

TARGET = "torchtitan.models.deepseek_v3:model_registry"


def sharded(model: torch.nn.Module) -> tuple[dict[str, int], dict[str, list]]:
    """Each unit's bytes a rank holds (by its modules), and each parameter's shard."""
    names = {id(m): n for n, m in model.named_modules()}
    units: dict[int, list] = {}
    params: dict[str, list] = {}
    for name, module in model.named_modules():
        if not isinstance(module, FSDPModule):
            continue
        state = module._get_fsdp_state()
        unit = units.setdefault(id(state), [[], 0])
        unit[0].append(name)
        for group in state._fsdp_param_groups:
            unit[1] = 0
            for param in group.fsdp_params:
                data = param._sharded_param_data
                unit[1] += data.numel() * data.element_size()
                key = f"{names[id(param._module_info.module)]}.{param._module_info.param_name}"
                params[key] = [list(data.shape), str(param.sharded_param.placements)]
    return {"+".join(modules): size for modules, size in units.values()}, params


def main(world: int) -> None:
    plan = execorder.fsdp.plan(
        TARGET,
        init_kwargs={"flavor": "debugmodel"},
        input_size="tokens=int64[1,64]@0:1000",
        layout="torchtitan",
        world_size=world,
        param_dtype="bfloat16",
        reduce_dtype="float32",
    )
    dist.init_process_group("fake", rank=0, world_size=world, store=FakeStore())
    try:
        mesh = init_device_mesh("cpu", (world,))
        with torch.device("meta"):
            theirs, ours = (model_registry("debugmodel").model.build() for _ in range(2))
        apply_fsdp_to_decoder(
            theirs, mesh, param_dtype=torch.bfloat16, reduce_dtype=torch.float32, pp_enabled=False
        )
        execorder.fsdp.shard(ours, plan, mesh=mesh)
        their_units, their_params = sharded(theirs)
        _, our_params = sharded(ours)
    finally:
        dist.destroy_process_group()
    record = {
        "world": world,
        "plan_units": {"+".join(u.modules): u.shard_bytes for u in plan.units if u.params},
        "shard_dims": dict(plan.shard_dims),
        "their_units": their_units,
        "their_params": their_params,
        "our_params": our_params,
    }
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        main(int(arg))
