"""Train test cases under DistributedDataParallel on two ranks, and say how DDP fared.

Run by tests/test_ddp.py in a subprocess with a timeout (a process group that
hangs can never hang the test run): two ranks on CPU with the gloo backend
and a file store (no network port), started by ``torch.multiprocessing``.
Both ranks build each case's model alike (seeded), feed it inputs of their
own, and run two steps under DDP with ``find_unused_parameters=False``, then
again with ``static_graph=True``, then with ``find_unused_parameters=True``.
Rank 0 prints one JSON line a case, how each fared:

- ``raises``: DDP raised (a parameter marked ready twice in one step);
- ``drifts``: no error, but some gradient differs across ranks after a step
  (DDP all-reduced it before all of it had arrived);
- ``ok``: every gradient is the same on both ranks, every step.

    python tests/ddp_passes_probe.py STORE_FILE CASE [CASE ...]
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
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

WORLD = 2


def _fares(name: str, rank: int, static_graph: bool, find_unused: bool = False) -> str:
    case = CASES[name]
    torch.manual_seed(0)
    model = DistributedDataParallel(
        case.build(), find_unused_parameters=find_unused, static_graph=static_graph
    )
    torch.manual_seed(1 + rank)
    for _ in range(2):
        outputs = model(*case.inputs(), **case.concrete_args)
        try:
            sum(o.float().sum() for _, o in output_tensors(outputs) if o.requires_grad).backward()
        except RuntimeError as exc:
            if "mark a variable ready only once" not in str(exc):
                raise
            return "raises"
        for param in model.parameters():
            if param.grad is None:
                continue
            gathered = [torch.empty_like(param.grad) for _ in range(WORLD)]
            dist.all_gather(gathered, param.grad.contiguous())
            if not torch.allclose(gathered[0], gathered[1]):
                return "drifts"
        model.zero_grad(set_to_none=True)
    return "ok"


def _rank(rank: int, store: str, names: list[str]) -> None:
    dist.init_process_group("gloo", store=dist.FileStore(store, WORLD), rank=rank, world_size=WORLD)
    try:
        for name in names:
            fared = {
                "default": _fares(name, rank, False),
                "static_graph": _fares(name, rank, True),
                "find_unused": _fares(name, rank, False, find_unused=True),
            }
            if rank == 0:
                print(json.dumps({"case": name, **fared}), flush=True)
    finally:
        dist.destroy_process_group()


def main() -> None:
    store, names = sys.argv[1], sys.argv[2:]
    mp.start_processes(_rank, args=(store, names), nprocs=WORLD, start_method="fork")


if __name__ == "__main__":
    main()
