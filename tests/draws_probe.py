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
  layer; ``helperddp-alike-watched``: the same draws from a generator a helper
  object holds (:class:`models.HelperRandomLayerDrop`), its first step watched;
- ``moe-ddp``: ``sample_models/moe.py``'s MoE (8 experts, top-1) under DDP,
  24 tokens a rank and step, from data whose first batch reaches every
  expert on both ranks (``first`` names the experts); ``moe-ddp-watched``:
  the same, its first step watched; ``moe-fsdp``, ``moe-fsdp-watched``: the
  same under FSDP2, each expert a unit;
- ``switch-fsdp-watched``: transformers' SwitchTransformers (8 experts a
  sparse layer, each an ``nn.Module`` run only when tokens reach it), each
  block an FSDP2 unit, both ranks' first batch alike and their later ones
  their own, its first step watched. Each rank writes a line after step 1
  (``warned``) and one when a step fails; gloo may abort a rank outright
  (a collective of another size), which then writes no second line.
"""

from __future__ import annotations

import contextlib
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
    elif how.startswith("helper"):
        model = models.HelperRandomLayerDrop()
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
    warned = _logged()
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


def _logged() -> list[str]:
    """What execorder logs from here on."""
    warned: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: warned.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("execorder").addHandler(handler)
    return warned


def _write(line: dict[str, object]) -> None:
    os.write(1, (json.dumps(line) + "\n").encode())  # one write: ranks' lines never mix


def _switch_job(rank: int) -> dict[str, object]:
    import transformers
    from transformers import SwitchTransformersConfig, SwitchTransformersForConditionalGeneration

    transformers.logging.set_verbosity_error()
    config = SwitchTransformersConfig(
        vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
        num_heads=4, num_experts=8, encoder_sparse_step=1, decoder_sparse_step=1,
        expert_capacity=64,
    )  # fmt: skip
    torch.manual_seed(0)
    model = SwitchTransformersForConditionalGeneration(config)
    for stack in (model.encoder, model.decoder):
        for block in stack.block:
            fully_shard(block)
    fully_shard(model)
    warned, watch = _logged(), StepWatch(steps=(1,))
    data = torch.Generator().manual_seed(10 + rank)
    for step in range(1, 11):  # the first batch from the build's generator: alike on both
        ids = torch.randint(0, 100, (2, 6), generator=data if step > 1 else None)
        try:
            if watch.wants(step):
                watch.begin(model, step)
            model(input_ids=ids, decoder_input_ids=ids).logits.sum().backward()
            if watch.active:
                watch.end()
        except Exception as exc:
            return {"step": step, "error": f"{type(exc).__name__}: {exc}"[:300]}
        if step == 1:
            _write({"job": "switch-fsdp-watched", "rank": rank, "after": 1, "warned": warned})
    return {"step": None}


def _rank(rank: int, store: str, how: str) -> None:
    dist.init_process_group(
        "gloo",
        store=dist.FileStore(store, WORLD),
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=5),
    )
    if how.startswith("switch"):
        _write({"job": how, "rank": rank, **_switch_job(rank)})
    else:
        _write({"job": how, "rank": rank, **_job(how, rank)})
    leave()  # after a failed collective the group is of no use, nor worth tearing down


def main() -> None:
    store, jobs = sys.argv[1], sys.argv[2:]
    for how in jobs:  # each in ranks of its own
        with contextlib.suppress(mp.ProcessExitedException):  # gloo aborted a rank
            mp.start_processes(
                _rank, args=(f"{store}-{how}", how), nprocs=WORLD, start_method="fork"
            )


if __name__ == "__main__":
    main()
