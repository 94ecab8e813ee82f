"""LayerDrop under real DDP and FSDP2: what a step that draws otherwise does.

Run by tests/test_draws.py in a subprocess with a timeout: two ranks on CPU
with the gloo backend and a file store (a 5-second timeout on the process
group, so a collective the other rank never makes fails instead of hanging),
started by ``torch.multiprocessing``. :class:`models.LayerDrop` skips each
layer with probability 0.5, drawing ``torch.rand(())``. For each job, up to
20 training steps, every rank drawing from a seed of its own (``apart``) or
the same one (``alike``); rank 0 prints one JSON line per job: the step at
which a rank failed and why, or ``null`` when all ran, and which layers each
rank's first step ran (rank 1's, where every rank ran all steps).

    python tests/draws_probe.py STORE_FILE JOB [JOB ...]

JOB: ``ddp-apart``, ``ddp-alike``, ``fsdp-apart``, ``fsdp-alike``; ``ddp-alike-watched``:
its first step watched by ``execorder.training.StepWatch`` (what it logged is
``warned``).
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from datetime import timedelta
from pathlib import Path

warnings.filterwarnings("ignore")
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE)]

import models  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from probing import leave  # noqa: E402
from torch.distributed.fsdp import fully_shard  # noqa: E402
from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: E402

from execorder.training import StepWatch  # noqa: E402

WORLD = 2
STEPS = 20
SEED = 53  # a seed whose first step runs every layer on both ranks (53 and 54)


def _job(how: str, rank: int) -> dict[str, object]:
    wrapper, draws, *watched = how.split("-")
    torch.manual_seed(0)
    model = models.LayerDrop()
    if wrapper == "ddp":
        job = DDP(model)
    else:
        for layer in model.layers:
            fully_shard(layer)
        job = fully_shard(model)
    ran: list[int] = []
    hooks = [m.register_forward_pre_hook(lambda m, _: ran.append(m.index)) for m in model.layers]
    for i, layer in enumerate(model.layers):
        layer.index = i
    torch.manual_seed(SEED + (rank if draws == "apart" else 0))
    data = torch.Generator().manual_seed(rank)
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
            out = job(torch.randn(2, 4, generator=data))
            if out.requires_grad:  # a step that skipped every layer has nothing to train
                out.sum().backward()
            if watch is not None and watch.active:
                watch.end()
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
            return {"step": step, "error": error, "first": first, "warned": warned}
        if step == 1:
            first = list(ran)
    for hook in hooks:
        hook.remove()
    return {"step": None, "first": first, "warned": warned}


def _rank(rank: int, store: str, how: str) -> None:
    dist.init_process_group(
        "gloo",
        store=dist.FileStore(store, WORLD),
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=5),
    )
    found = _job(how, rank)
    everyone: list[object] = [found, None]
    if found["step"] is None:  # the ranks are still in step with each other
        dist.all_gather_object(everyone, found)
    if rank == 0:
        print(json.dumps({"job": how, "ranks": everyone}), flush=True)
    leave()  # after a failed collective the group is of no use, nor worth tearing down


def main() -> None:
    store, jobs = sys.argv[1], sys.argv[2:]
    for how in jobs:  # each in ranks of its own
        mp.start_processes(_rank, args=(f"{store}-{how}", how), nprocs=WORLD, start_method="fork")


if __name__ == "__main__":
    main()
