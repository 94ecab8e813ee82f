"""execorder's memory of a training step against the CUDA allocator, on a lent GPU.

For each model: two real training steps on CUDA (forward, backward of the
summed outputs, AdamW's step; its foreach implementation, CUDA's default),
``torch.cuda.max_memory_allocated`` over them (the model, its batch and
everything the steps make; the allocator rounds each block up), against
execorder's measure made on meta (``profile(..., memory="adamw")``) and on
CUDA itself. Then one FSDP2 rank: the same models sharded by execorder's
plan over a fake process group of 8 ranks, run for real on CUDA (collectives
move nothing, every allocation is real), ``max_memory_allocated`` from the
sharded model on, against ``execorder.fsdp.plan_memory`` of that plan on
meta. Prints each error; skips without CUDA. What differs, and why, is in
docs/memory.md.

    python benchmarks/gpu_memory.py        # also run by benchmarks/gpu_check.sh
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent.parent / "sample_models")]


def two_steps(model: torch.nn.Module, batch: torch.Tensor, step: torch.optim.Optimizer) -> None:
    """Forward, a backward of the summed outputs, the optimizer's step; twice."""
    for _ in range(2):
        out = model(batch)
        (out.logits if hasattr(out, "logits") else out).float().sum().backward()
        del out
        step.step()
        step.zero_grad(set_to_none=True)


def allocated_peak(build: object, ids: torch.Tensor) -> int:
    torch.manual_seed(0)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    with torch.device("cuda"):
        model = build()  # type: ignore[operator]
    batch = ids.cuda()
    step = torch.optim.AdamW(model.parameters())
    two_steps(model, batch, step)
    peak = torch.cuda.max_memory_allocated() - before
    del model, step, batch
    return peak


WORLD = 8  # the ranks one rank is measured among


def sharded_peak(build: object, ids: torch.Tensor, plan: object, device: str = "cuda") -> int:
    """One rank's real step under ``plan``: FSDP2 on ``device`` over a fake process group.

    On CUDA, the allocator's peak over two steps, from the sharded model on (the
    unsharded build before it is no part of a rank's step); elsewhere 0 (a dry run).
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore

    import execorder.fsdp

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=WORLD)
    try:
        cuda = device == "cuda"
        torch.manual_seed(0)
        start = torch.cuda.memory_allocated() if cuda else 0
        with torch.device(device):
            model = build()  # type: ignore[operator]
        execorder.fsdp.shard(model, plan, mesh=init_device_mesh(device, (WORLD,)))
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        batch = ids.to(device)
        step = torch.optim.AdamW(model.parameters(), foreach=True)
        two_steps(model, batch, step)
        peak = torch.cuda.max_memory_allocated() - start if cuda else 0
        del model, step, batch
        return peak
    finally:
        dist.destroy_process_group()


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_memory: skipped (no CUDA device)")
        return 0
    import hf
    from llama import Llama

    import execorder

    cases = {
        "tiny Llama (transformers), 4 x 512 tokens": (
            lambda: hf.tiny_llama(layers=4),
            torch.randint(0, 100, (4, 512)),
        ),
        "Llama-shaped, 12 layers of 1024, 2 x 1024 tokens": (
            lambda: Llama(
                vocab=32000, dim=1024, n_layers=12, n_heads=16, n_kv_heads=4, hidden=2816
            ),
            torch.randint(0, 32000, (2, 1024)),
        ),
    }
    worst = 0.0
    for name, (build, ids) in cases.items():
        real = allocated_peak(build, ids)
        on_meta = execorder.profile(build, inputs=ids, memory="adamw").report.memory
        on_cuda = execorder.profile(build, inputs=ids, memory="adamw", device="cuda").report.memory
        assert on_meta is not None and on_cuda is not None
        error = (on_meta.peak_bytes - real) / real
        worst = max(worst, abs(error))
        print(
            f"{name}: CUDA allocator {real / 2**20:.1f} MiB, execorder on meta "
            f"{on_meta.peak_bytes / 2**20:.1f} MiB ({error:+.1%}), on CUDA "
            f"{on_cuda.peak_bytes / 2**20:.1f} MiB"
        )
    import execorder.fsdp

    for name, (build, ids) in cases.items():
        profiler = execorder.Profiler(build, inputs=ids)
        plan, report = execorder.fsdp.plan_and_report(profiler, world_size=WORLD)
        predicted = execorder.fsdp.plan_memory(profiler, plan, report).memory
        assert predicted is not None
        real = sharded_peak(build, ids, plan)
        error = (predicted.peak_bytes - real) / real
        worst = max(worst, abs(error))
        print(
            f"{name}, one FSDP2 rank of {WORLD}: CUDA allocator {real / 2**20:.1f} MiB, "
            f"execorder on meta {predicted.peak_bytes / 2**20:.1f} MiB ({error:+.1%})"
        )
    print(f"gpu_memory: worst error {worst:.1%} (PyTorch's tracker tests hold 10%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
