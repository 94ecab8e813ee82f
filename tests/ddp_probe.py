"""Run test cases under DistributedDataParallel and print the indices DDP names.

Run by tests/test_ddp.py in a subprocess (so that a misbehaving process group
can never hang the test run): gloo backend, world size 1, a file store (no
network port). For each case it wraps the model in DDP with
``find_unused_parameters=False``, runs two training steps, and prints one JSON
line: the parameter indices from DDP's "did not receive grad" error, or []
when both steps succeed (or DDP finds a parameter marked ready twice, which
``ddp_passes_probe.py`` looks at).

    python tests/ddp_probe.py STORE_FILE CASE [CASE ...]
"""

from __future__ import annotations

import json
import re
import sys
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "sample_models")]

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from cases import CASES, output_tensors  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

INDICES = re.compile(r"Parameter indices which did not receive grad for rank 0: ([\d ]+)")


def ddp_missing_indices(name: str) -> list[int] | None:
    case = CASES[name]
    torch.manual_seed(0)
    model = DistributedDataParallel(case.build(), find_unused_parameters=False)
    for _ in range(2):
        try:
            outputs = model(*case.inputs(), **case.concrete_args)
        except RuntimeError as exc:
            match = INDICES.search(str(exc))
            if match is None:
                raise
            return [int(i) for i in match.group(1).split()]
        losses = [o.float().sum() for _, o in output_tensors(outputs) if o.requires_grad]
        if not losses:
            return None  # nothing to train: DDP never runs a backward
        try:
            sum(losses).backward()
        except RuntimeError as exc:
            if "mark a variable ready only once" not in str(exc):
                raise
            return []  # every parameter got its gradient, in parts: tests/ddp_passes_probe.py
    return []


def main() -> None:
    store, names = sys.argv[1], sys.argv[2:]
    dist.init_process_group("gloo", store=dist.FileStore(store, 1), rank=0, world_size=1)
    try:
        for name in names:
            print(json.dumps({"case": name, "indices": ddp_missing_indices(name)}), flush=True)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
