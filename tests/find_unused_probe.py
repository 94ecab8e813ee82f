"""Train transformers models checkpointed reentrantly under DDP(find_unused_parameters=True).

Run by tests/test_ddp.py in a subprocess (a process group can never hang the
test run): gloo, world size 1, a file store. Each model type is built small
from its config, with transformers' own ``gradient_checkpointing_enable``
(``use_reentrant`` as given), and trained two steps. One JSON line a model:
``raises`` (DDP's "Expected to mark a variable ready only once") or ``ok``.

    python tests/find_unused_probe.py STORE_FILE REENTRANT MODEL_TYPE [MODEL_TYPE ...]
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
sys.path[:0] = [str(Path(__file__).resolve().parent)]

import torch.distributed as dist  # noqa: E402
from hf_small import checkpointed, ids  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402


def fares(model_type: str, reentrant: bool) -> str:
    model = DistributedDataParallel(
        checkpointed(model_type, reentrant), find_unused_parameters=True
    )
    for _ in range(2):
        try:
            model(input_ids=ids(), use_cache=False).logits.float().sum().backward()
        except RuntimeError as exc:
            if "mark a variable ready only once" not in str(exc):
                raise
            return "raises"
    return "ok"


def main() -> None:
    store, reentrant, names = sys.argv[1], sys.argv[2] == "true", sys.argv[3:]
    dist.init_process_group("gloo", store=dist.FileStore(store, 1), rank=0, world_size=1)
    try:
        for name in names:
            print(json.dumps({"model": name, "fares": fares(name, reentrant)}), flush=True)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
