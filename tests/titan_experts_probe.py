"""Shard torchtitan's models as its own parallelize functions do, and by execorder's plan,
over a fake process group.

torchtitan shards a decoder with ``apply_fsdp_to_decoder`` and, first, a
VLM's vision encoder with ``apply_fsdp_to_vision_encoder`` (as Kimi K2.7's
``parallelize`` does). Run by tests/test_titan.py in a subprocess (the fake
process group is global state). For each ``REGISTRY:FLAVOR:WORLD_SIZE`` it
prints one JSON line: each unit as torchtitan shards it (read from FSDP2's
own states: the bytes a rank holds, whether it reshards after forward), the
plan's units, and each parameter's shard shape and placement under
torchtitan's sharding and under ``execorder.fsdp.shard`` of the plan. With
more ranks than experts torchtitan shards the experts' weights on dim 1
(DeepSeek-V3's debug model has 8 a block). No forward runs; all is on meta.

    python tests/titan_experts_probe.py REGISTRY:FLAVOR:WORLD_SIZE ...
"""

from __future__ import annotations

import importlib
import json
import sys
import warnings

warnings.filterwarnings("ignore")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from fsdp_states import sharded  # noqa: E402
from torch.distributed.device_mesh import init_device_mesh  # noqa: E402
from torch.testing._internal.distributed.fake_pg import FakeStore  # noqa: E402
from torchtitan.distributed.fsdp import (  # noqa: E402
    apply_fsdp_to_decoder,
    apply_fsdp_to_vision_encoder,
)

import execorder.fsdp  # noqa: E402


def main(registry: str, flavor: str, world: int) -> None:
    plan = execorder.fsdp.plan(
        f"torchtitan.models.{registry}:model_registry",
        init_kwargs={"flavor": flavor},
        input_size="tokens=int64[1,64]@0:1000",
        layout="torchtitan",
        world_size=world,
        param_dtype="bfloat16",
        reduce_dtype="float32",
    )
    build = importlib.import_module(f"torchtitan.models.{registry}").model_registry
    dist.init_process_group("fake", rank=0, world_size=world, store=FakeStore())
    try:
        mesh = init_device_mesh("cpu", (world,))
        with torch.device("meta"):
            theirs, ours = (build(flavor).model.build() for _ in range(2))
        dtypes = {"param_dtype": torch.bfloat16, "reduce_dtype": torch.float32}
        if getattr(theirs, "vision_encoder", None) is not None:
            apply_fsdp_to_vision_encoder(theirs.vision_encoder, mesh, **dtypes)
        apply_fsdp_to_decoder(theirs, mesh, pp_enabled=False, **dtypes)
        execorder.fsdp.shard(ours, plan, mesh=mesh)
        their_units, their_params = sharded(theirs)
        _, our_params = sharded(ours)
    finally:
        dist.destroy_process_group()
    record = {
        "case": f"{registry}:{flavor}:{world}",
        "plan_units": {
            "+".join(u.modules): [u.shard_bytes, u.reshard_after_forward]
            for u in plan.units
            if u.params
        },
        "shard_dims": dict(plan.shard_dims),
        "their_units": their_units,
        "their_params": their_params,
        "our_params": our_params,
    }
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        registry, flavor, world = arg.split(":")
        main(registry, flavor, int(world))
