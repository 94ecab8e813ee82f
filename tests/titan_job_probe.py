"""A training step of torchtitan's debug models, parallelized by torchtitan itself.

Run by tests/test_titan.py in a subprocess with a timeout: two ranks on CPU
(gloo, a file store), started by ``torch.multiprocessing``. For each case
(Llama3 and DeepSeek-V3, a mixture of experts, under torchtitan's own tensor
parallelism, ``model.parallelize(parallel_dims)``, with one of its SPMD
backends or the other; the Llama3 with ``apply_fsdp_to_decoder``'s bfloat16
mixed precision on top, over a data-parallel mesh of one), run inside torchtitan's own SPMD
context as its trainer runs a step, rank 0 prints one JSON line: where
``execorder.record()``'s report of the step first differs from the plain
model's (``equal``: null when it does not), and where it differs from what
the real backward did (``truth``: the parameters it says get a gradient
against those that got one). torchtitan's language models attend with
FlexAttention, which has no backward on CPU: every case and the plain model
attend with torchtitan's own ``ScaledDotProductAttention``. (Expert
parallelism's all-to-all of uneven splits is not one gloo has.)

    python tests/titan_job_probe.py STORE_FILE
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE)]

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
import torchtitan.distributed.parallel_dims as parallel_dims  # noqa: E402
from compiled_steps import as_eager  # noqa: E402
from job_probe import first_difference  # noqa: E402
from probing import leave  # noqa: E402
from torch import nn  # noqa: E402
from torchtitan.distributed import ParallelDims  # noqa: E402
from torchtitan.distributed.fsdp import apply_fsdp_to_decoder  # noqa: E402
from torchtitan.distributed.utils import get_spmd_context  # noqa: E402
from torchtitan.models.common.attention import ScaledDotProductAttention  # noqa: E402

import execorder  # noqa: E402

WORLD = 2
# (the model, torchtitan's SPMD backend, FSDP over a data-parallel mesh of one in bfloat16)
CASES = [
    ("llama3", "spmd_types", False),
    ("llama3", "partial_dtensor", True),
    ("deepseek_v3", "partial_dtensor", False),
]


def built(name: str) -> nn.Module:
    from importlib import import_module

    torch.manual_seed(0)
    registry = import_module(f"torchtitan.models.{name}").model_registry
    model = registry("debugmodel").model.build()
    for block in model.layers.values():
        block.attention.inner_attention = ScaledDotProductAttention.Config().build()
    return model


def recorded(model: nn.Module, tokens: torch.Tensor, name: str) -> execorder.Report:
    with execorder.record(model) as recording:
        out = model(tokens)
        out = out.full_tensor() if hasattr(out, "full_tensor") else out
        out.float().sum().backward()
    return recording.report(target=name)


def worker(rank: int, store_path: str) -> None:
    dist.init_process_group(
        "gloo", store=dist.FileStore(store_path, WORLD), rank=rank, world_size=WORLD
    )
    parallel_dims.device_type = "cpu"  # torchtitan takes CUDA unless a GPU says otherwise
    try:
        tokens = torch.randint(0, 2000, (1, 32), generator=torch.Generator().manual_seed(0))
        names = dict.fromkeys(name for name, *_ in CASES)
        plain = {n: as_eager(recorded(built(n), tokens, n).to_dict()) for n in names}
        for name, backend, fsdp in CASES:
            model = built(name)
            dims = ParallelDims(
                dp_replicate=1,
                dp_shard=1,
                cp=1,
                tp=WORLD,
                pp=1,
                ep=1,
                world_size=WORLD,
                spmd_backend=backend,
            )
            dims.build_mesh()
            model.parallelize(dims)
            if fsdp:
                apply_fsdp_to_decoder(
                    model,
                    dims.get_mesh(["fsdp"]),
                    param_dtype=torch.bfloat16,
                    reduce_dtype=torch.float32,
                    pp_enabled=False,
                )
            with get_spmd_context(parallel_dims=dims)():  # as torchtitan's trainer runs a step
                report = recorded(model, tokens, name)
            graded = {n for n, p in model.named_parameters() if p.grad is not None}
            gets = {p.name for p in report.all_params() if p.gets_gradient}
            line = {
                "case": f"{name}/{backend}" + ("+fsdp" if fsdp else ""),
                "equal": first_difference(plain[name], as_eager(report.to_dict())),
                "truth": None if graded == gets else f"{sorted(gets)} != {sorted(graded)}",
                "used": report.summary.params_used,
            }
            dist.barrier()
            if rank == 0:
                print(json.dumps(line), flush=True)
    finally:
        dist.destroy_process_group()
    leave()


if __name__ == "__main__":
    mp.spawn(worker, args=(sys.argv[1],), nprocs=WORLD, join=True)
