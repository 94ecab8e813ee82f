"""Run execorder's cross-rank comparison, and the real DDP it forestalls, on real ranks.

Run by tests/test_ranks_real.py in a subprocess with a timeout: ``WORLD``
ranks on CPU with the gloo backend, started by torchrun, or by
``torch.multiprocessing`` with a file store. Rank 0 prints one JSON line per
case.

    python tests/ranks_probe.py STORE_FILE WORLD compare   # each case: profile, then compare
    python tests/ranks_probe.py STORE_FILE WORLD record    # record() around a step, then compare
    python tests/ranks_probe.py STORE_FILE WORLD fsdp      # an image branch on rank 0 under FSDP2
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parent / "sample_models")]

import models  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

import execorder  # noqa: E402
import execorder.ranks  # noqa: E402
from execorder.loading import Inputs  # noqa: E402


def cases(rank: int, world: int) -> dict[str, dict]:
    keywords = {"rank": rank, "world_size": world}
    return {
        "dropout": {"model": models.WithDropout, "input_size": (2, 4)},
        "layerdrop": {"model": models.LayerDrop, "input_size": (2, 4)},
        "image": {
            "model": models.OptionalImage,
            "inputs": Inputs(models.image_on_rank_0, keywords=keywords),
        },
        "early-exit": {
            "model": models.EarlyExit,
            "inputs": Inputs(models.lengths_by_rank, keywords=keywords),
        },
        "moe": {
            "model": "sample_models/moe.py:MoE",
            "input_size": "float32[4,16]",
            "device": "cpu",
        },
    }


def compare_cases(rank: int, world: int) -> None:
    for name, options in cases(rank, world).items():
        model = options.pop("model")
        report = execorder.Profiler(model, **options).run(seed=rank).report
        result = execorder.ranks.compare(report)
        if rank == 0:
            print(json.dumps({"case": name, **result.to_dict()}), flush=True)


def record_step(rank: int, world: int) -> None:
    torch.manual_seed(0)
    model = models.LayerDrop()
    torch.manual_seed(rank)  # each rank draws its own layers, as in training
    with execorder.record(model) as recording:
        model(torch.randn(2, 4)).sum().backward()
    result = execorder.ranks.compare(recording.report())
    if rank == 0:
        print(json.dumps({"case": "record", **result.to_dict()}), flush=True)


def fsdp_steps(rank: int, world: int) -> None:
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = models.OptionalImage()
    for unit in (model.text, model.vision):
        fully_shard(unit)
    fully_shard(model)
    inputs = models.image_on_rank_0(rank=rank, world_size=world)
    start = time.perf_counter()
    outcome = "ran 2 steps"
    try:
        for _ in range(2):
            model(**inputs).sum().backward()
    except Exception as exc:  # what FSDP2 does is the finding
        outcome = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    line = {"case": "fsdp", "rank": rank, "outcome": outcome, "s": time.perf_counter() - start}
    # One write a line: both ranks print, and a pipe keeps a short write whole.
    os.write(1, (json.dumps(line) + "\n").encode())


def worker(rank: int, store: str, world: int, what: str) -> None:
    dist.init_process_group(
        "gloo",
        store=dist.FileStore(store, world),
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=5 if what == "fsdp" else 30),
    )
    try:
        {"compare": compare_cases, "record": record_step, "fsdp": fsdp_steps}[what](rank, world)
    finally:
        if what != "fsdp":
            dist.destroy_process_group()
    leave()


def leave() -> None:
    """Exit now that every line is written, without the interpreter's teardown.

    Tearing down gloo's threads at exit aborts now and then ("terminate called
    without an active exception", pytorch#179291), above all after a
    collective timed out (the fsdp case, by design): that says nothing about
    what was measured.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    store, world, what = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if "RANK" in os.environ:  # started by torchrun: this process is one rank
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=30))
        try:
            {"compare": compare_cases, "record": record_step}[what](dist.get_rank(), world)
        finally:
            dist.barrier()
            dist.destroy_process_group()
        leave()
    else:
        mp.spawn(worker, args=(store, world, what), nprocs=world, join=True)
