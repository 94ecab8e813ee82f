"""Recording overhead on a GPU: execorder's eager trace vs the plain model.

A 0.85 B-parameter Llama (sample_models/llama.py: hidden 2048, 14 layers,
MLP 5632, vocabulary 32000) in bfloat16, batch 4 x 512 tokens, on CUDA.
Measures, side by side in one process, the median of N timed runs after
warm-up: plain forward, plain forward + backward, and execorder's recording
of each (the whole ``eager.trace`` call: hooks, recording parameters, gradient
hooks, liveness and the report). Target: at most 1.10x for forward + backward.

    python benchmarks/bench_gpu.py          # needs a CUDA device
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "sample_models"))
from llama import Llama

from execorder import eager


def timed(fn: Callable[[], object], repeats: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA device")
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Llama(vocab=32000, dim=2048, n_layers=14, n_heads=16, n_kv_heads=16, hidden=5632)
    model = model.to(torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    ids = torch.randint(0, 32000, (4, 512), device="cuda")

    def forward() -> None:
        with torch.no_grad():
            model(ids)

    def forward_backward() -> None:
        model(ids).float().sum().backward()
        model.zero_grad(set_to_none=True)

    def recorded_forward() -> None:
        eager.trace(model, kwargs={"input_ids": ids})

    def recorded_forward_backward() -> None:
        eager.trace(model, kwargs={"input_ids": ids}, backward=True)
        model.zero_grad(set_to_none=True)

    repeats = 20
    plain_f, plain_fb = timed(forward, repeats), timed(forward_backward, repeats)
    rec_f, rec_fb = timed(recorded_forward, repeats), timed(recorded_forward_backward, repeats)
    print(f"device: {torch.cuda.get_device_name()}, {params / 1e9:.2f} B parameters, bf16, 4 x 512")
    print(
        f"forward            plain {plain_f * 1e3:7.1f} ms   execorder {rec_f * 1e3:7.1f} ms"
        f"   ratio {rec_f / plain_f:.2f}x"
    )
    print(
        f"forward + backward plain {plain_fb * 1e3:7.1f} ms   execorder {rec_fb * 1e3:7.1f} ms"
        f"   ratio {rec_fb / plain_fb:.2f}x   (target <= 1.10x)"
    )


if __name__ == "__main__":
    main()
