"""Shard transformers models as accelerate's FSDP2 preparation does, and by execorder's plan.

accelerate prepares a model for FSDP2 with ``fsdp2_prepare_model``: with
``auto_wrap_policy="transformer_based_wrap"`` it shards each module of the
model's ``_no_split_modules`` classes, then the input embedding, then the
final norm with the output head as one group kept gathered (the embedding
joins the group when tied), then the root. Run by tests/test_accelerate.py
in a subprocess (the fake process group is global state): for each case it
prints one JSON line with each unit as accelerate shards it and as
``execorder.fsdp.shard`` shards the plans of ``--layout accelerate`` and
``--layout torchtitan`` (read
from FSDP2's own states: its modules, the bytes a rank holds, whether it
reshards after forward, once FSDP2 settled the root's). No forward runs.

    python tests/accelerate_probe.py CASE ...
"""

from __future__ import annotations

import json
import sys
import types
import warnings
from collections.abc import Callable
from pathlib import Path

warnings.filterwarnings("ignore")
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "sample_models")]

import hf  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from accelerate.utils import FullyShardedDataParallelPlugin  # noqa: E402
from accelerate.utils.fsdp_utils import fsdp2_prepare_model  # noqa: E402
from fsdp_states import sharded  # noqa: E402
from torch.testing._internal.distributed.fake_pg import FakeStore  # noqa: E402

import execorder.fsdp  # noqa: E402

WORLD = 2
CASES: dict[str, Callable[[], torch.nn.Module]] = {
    "llama": lambda: hf.tiny_llama(layers=2, tie=False),
    "llama-tied": lambda: hf.tiny_llama(layers=2, tie=True),
    "gpt2": lambda: hf.tiny_gpt2(layers=2),
    "mixtral": lambda: hf.tiny_mixtral(layers=2),
    # accelerate finds the final norm among the base model's own children only: Llama 4's
    # (under model.) is not found, and stays in the root
    "llama4": lambda: hf.tiny_llama4(),
}


def units(model: torch.nn.Module) -> dict[str, list]:
    """Each FSDP2 unit with parameters: its modules (sorted, joined by +) -> [bytes a rank
    holds, reshards after forward]."""
    model._get_fsdp_state()._lazy_init()  # the root's flag is settled here
    found, _ = sharded(model)
    return {
        "+".join(sorted(modules.split("+"))): unit
        for modules, unit in found.items()
        if unit[1] is not None
    }


def accelerated(model: torch.nn.Module) -> None:
    """``fsdp2_prepare_model`` as ``Accelerator.prepare`` calls it, with its defaults."""
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy="transformer_based_wrap",
        reshard_after_forward=True,
        cpu_ram_efficient_loading=False,
    )
    accelerator = types.SimpleNamespace(
        state=types.SimpleNamespace(fsdp_plugin=plugin),
        torch_device_mesh=None,
        mixed_precision="no",
        is_main_process=True,
        device=torch.device("cpu"),
    )
    fsdp2_prepare_model(accelerator, model)


def main(case: str) -> None:
    build = CASES[case]
    plans = {
        layout: execorder.fsdp.plan(
            build, input_size="int64[1,16]@0:100", layout=layout, world_size=WORLD
        )
        for layout in ("accelerate", "torchtitan")
    }
    dist.init_process_group("fake", rank=0, world_size=WORLD, store=FakeStore())
    try:
        theirs = build()  # small: on CPU, so FSDP2 settles the root's flag
        accelerated(theirs)
        record = {"case": case, "theirs": units(theirs)}
        for layout, plan in plans.items():
            ours = build()
            execorder.fsdp.shard(ours, plan)
            record[layout] = units(ours)
    finally:
        dist.destroy_process_group()
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    for name in sys.argv[1:]:
        main(name)
