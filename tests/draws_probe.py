"""Choices made anew each step, under real DDP and FSDP2: what a step that chooses otherwise does.

Run by tests/test_draws.py in a subprocess with a timeout: two ranks on CPU
with the gloo backend and a file store (a 5-second timeout on the process
group, so a collective the other rank never makes fails instead of hanging),
started by ``torch.multiprocessing``, each job in ranks of its own. Up to 20
training steps a job; every rank prints one JSON line per job: the step at
which it failed and why (``step`` null when it ran them all), which modules
its first step ran, and what ``execorder`` logged.

    python tests/draws_probe.py STORE_FILE JOB [JOB ...]

JOB:

- ``ddp-apart``, ``ddp-alike``, ``fsdp-apart``, ``fsdp-alike``:
  :class:`models.LayerDrop` (each layer skipped with probability 0.5 by
  ``torch.rand(())``) under DDP or FSDP2 (each layer a unit), every rank
  drawing from a seed of its own (``apart``) or the same one (``alike``),
  a seed whose first step runs every layer on both ranks;
- ``ddp-alike-watched``: the same, its first step watched by
  ``execorder.training.StepWatch``;
- ``pyddp-alike``: :class:`models.PythonLayerDrop` (drawn by
  ``random.uniform(0, 1)``, as transformers 4 drew it) under DDP, both ranks
  seeding Python's ``random`` alike, its first step running every layer;
- ``ownddp-alike``: :class:`models.OwnRandomLayerDrop` (drawn from a
  ``random.Random(5)`` of its own) under DDP, its first step running every
  layer;
- ``moe-ddp``: ``sample_models/moe.py``'s MoE (8 experts, top-1) under DDP,
  24 tokens a rank and step, from data whose first batch reaches every
  expert on both ranks (``first`` names the experts); ``moe-ddp-watched``:
  the same, its first step watched; ``moe-fsdp``, ``moe-fsdp-watched``: the
  same under FSDP2, each expert a unit.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import warnings
from datetime import timedelta
from pathlib import Path

warnings.filterwarnings("ignore")
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "sample_models")]

import models  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from moe import MoE  # noqa: E402
from probing import leave  # noqa: E402
from torch import nn  # noqa: E402
from torch.distributed.fsdp import fully_shard  # noqa: E402
from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: E402

from execorder.training import StepWatch  # noqa: E402

WORLD = 2
STEPS = 20
SEED = 53  # a seed whose first step runs every layer on both ranks (53 and 54)
PYTHON_SEED = 5  # random.seed(5): the first four random.uniform(0, 1) keep every layer
MOE_DATA = 6  # rank r's batches from seed 6 + r: the first reaches every expert on both
MOE_TOKENS = 24


def _build(how: str) -> tuple[nn.Module, list[nn.Module]]:
    """The model, and the modules whose calls a first step is told by."""
    torch.manual_seed(0)
    if how.startswith("moe"):
        model = MoE()
        return model, list(model.experts)
    if how.startswith("own"):
        model = models.OwnRandomLayerDrop()
    else:
        model = models.PythonLayerDrop() if how.startswith("py") else models.LayerDrop()
    return model, list(model.layers)


def _job(how: str, rank: int) -> dict[str, object]:
    words = how.split("-")
    routed, watched = words[0] == "moe", words[-1] == "watched"
    wrapper, draws = (words[1], "alike") if routed else (words[0], words[1])
    model, told = _build(how)
    if wrapper == "fsdp":
        for module in told:
            fully_shard(module)
        job = fully_shard(model)
    else:
        job = DDP(model)
    ran: list[int] = []
    for i, module in enumerate(told):
        module.register_forward_pre_hook(lambda m, _, i=i: ran.append(i))
    torch.manual_seed(SEED + (rank if draws == "apart" else 0))
    random.seed(PYTHON_SEED + (rank if draws == "apart" else 0))
    if routed:
        data, shape = torch.Generator().manual_seed(MOE_DATA + rank), (MOE_TOKENS, 16)
    else:
        data, shape = torch.Generator().manual_seed(rank), (2, 4)
    first: list[int] = []
    warned: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: warned.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("execorder").addHandler(handler)
    watch = StepWatch(steps=(1,)) if watched else None
    for step in range(1, STEPS + 1):
        try:
            if watch is not None and watch.wants(step):
                watch.begin(job, step)
            out = job(torch.randn(*shape, generator=data))
            if out.requires_grad:  # a step that skipped every layer has nothing to train
                out.sum().backward()
            if watch is not None and watch.active:
                watch.end()
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
            return {"step": step, "error": error, "first": first, "warned": warned}
        if step == 1:
            first = sorted(set(ran))
    return {"step": None, "first": first, "warned": warned}


def _rank(rank: int, store: str, how: str) -> None:
    dist.init_process_group(
        "gloo",
        store=dist.FileStore(store, WORLD),
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=5),
    )
    line = json.dumps({"job": how, "rank": rank, **_job(how, rank)}) + "\n"
    os.write(1, line.encode())  # one write a line: the ranks' lines never run together
    leave()  # after a failed collective the group is of no use, nor worth tearing down


def main() -> None:
    store, jobs = sys.argv[1], sys.argv[2:]
    for how in jobs:  # each in ranks of its own
        mp.start_processes(_rank, args=(f"{store}-{how}", how), nprocs=WORLD, start_method="fork")


if __name__ == "__main__":
    main()
