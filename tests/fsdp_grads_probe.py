"""Shard test cases by execorder's FSDP2 plans and compare FSDP2's gradients with a plain backward.

Run by tests/test_fsdp_real.py in a subprocess with a timeout (a process
group that hangs can never hang the test run): two ranks on CPU with the
gloo backend and a file store, started by ``torch.multiprocessing``. For
each ``CASE=UNIT[+UNIT...]`` it plans FSDP2 with those units
(``execorder.fsdp.plan``, FX), shards a seeded model by the plan
(``execorder.fsdp.shard``), runs one step on inputs of each rank's own, and
compares each parameter's gradient with that of the unsharded model on both
ranks' inputs (their mean, as FSDP2 reduces). Rank 0 prints one JSON line a
combination: the plan's checks by kind with their units, and the parameters
whose FSDP2 gradient is wrong (or not a sharded one at all).

    python tests/fsdp_grads_probe.py STORE_FILE CASE=UNIT[+UNIT...] ...
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "sample_models")]

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from cases import CASES, output_tensors  # noqa: E402

import execorder.fsdp  # noqa: E402

WORLD = 2


def _loss(model: torch.nn.Module, inputs: tuple[object, ...]) -> torch.Tensor:
    return sum(t.float().sum() for _, t in output_tensors(model(*inputs)) if t.requires_grad)


def _wrong(name: str, units: list[str], rank: int) -> tuple[dict[str, list[str]], list[str]]:
    case = CASES[name]
    torch.manual_seed(0)
    plan = execorder.fsdp.plan(case.build(), units=units)
    checks: dict[str, list[str]] = {}
    for check in plan.checks:
        checks.setdefault(check.kind.value, []).extend(check.units)
    torch.manual_seed(0)
    reference = case.build()
    model = case.build()
    model.load_state_dict(reference.state_dict())
    execorder.fsdp.shard(model, plan)
    torch.manual_seed(1 + rank)
    inputs = case.inputs()
    _loss(model, inputs).backward()
    everyone = [None] * WORLD
    dist.all_gather_object(everyone, inputs)
    (sum(_loss(reference, given) for given in everyone) / WORLD).backward()
    wrong = []
    for (param, sharded), (_, plain) in zip(
        model.named_parameters(), reference.named_parameters(), strict=True
    ):
        grad = sharded.grad
        if grad is None or plain.grad is None:
            if (grad is None) != (plain.grad is None):
                wrong.append(param)
            continue
        full = grad.full_tensor() if hasattr(grad, "full_tensor") else None
        if full is None or not torch.allclose(full, plain.grad, atol=1e-5):
            wrong.append(param)
    return checks, wrong


def _rank(rank: int, store: str, combos: list[str]) -> None:
    dist.init_process_group("gloo", store=dist.FileStore(store, WORLD), rank=rank, world_size=WORLD)
    try:
        for combo in combos:
            name, _, units = combo.partition("=")
            checks, wrong = _wrong(name, units.split("+") if units else [], rank)
            if rank == 0:
                print(json.dumps({"combo": combo, "checks": checks, "wrong": wrong}), flush=True)
    finally:
        dist.destroy_process_group()


def main() -> None:
    store, combos = sys.argv[1], sys.argv[2:]
    mp.start_processes(_rank, args=(store, combos), nprocs=WORLD, start_method="fork")


if __name__ == "__main__":
    main()
