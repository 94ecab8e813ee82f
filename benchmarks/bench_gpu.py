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


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median wall time (to the GPU's finish) and median host time (to return)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    wall, host = [], []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        host.append(time.perf_counter() - start)
        torch.cuda.synchronize()
        wall.append(time.perf_counter() - start)
    return statistics.median(wall), statistics.median(host)


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

    # Two rounds, interleaved, so the spread between them shows the noise.
    repeats = 20
    rows = [
        ("forward", forward, recorded_forward),
        ("forward + backward", forward_backward, recorded_forward_backward),
    ]
    print(
        f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
        f"{params / 1e9:.2f} B parameters, bf16, batch 4 x 512, median of {repeats}"
    )
    for round_ in (1, 2):
        for label, plain, recorded in rows:
            (plain_s, plain_host), (recorded_s, recorded_host) = (
                timed(plain, repeats),
                timed(recorded, repeats),
            )
            print(
                f"round {round_}  {label:18s} plain {plain_s * 1e3:7.2f} ms"
                f"   execorder {recorded_s * 1e3:7.2f} ms   ratio {recorded_s / plain_s:.3f}x"
                f"   (host {plain_host * 1e3:.2f} / {recorded_host * 1e3:.2f} ms)"
            )
    print("target: forward + backward at most 1.10x")
    if "--breakdown" in sys.argv:
        breakdown(model, ids, forward_backward, repeats)


def breakdown(
    model: torch.nn.Module, ids: torch.Tensor, plain: Callable[[], None], repeats: int
) -> None:
    """Forward + backward with each part of the recording added in turn."""
    modules, params = eager._modules_and_params(model)

    def recorded_calls() -> torch.Tensor:
        with eager._recording(model, modules, params, []):
            return model(ids)

    def calls_and_plain_backward() -> None:
        recorded_calls().float().sum().backward()
        model.zero_grad(set_to_none=True)

    def calls_and_backward_order() -> None:
        eager.backward_order(recorded_calls(), params)
        model.zero_grad(set_to_none=True)

    def everything() -> None:
        eager.trace(model, kwargs={"input_ids": ids}, backward=True)
        model.zero_grad(set_to_none=True)

    steps = [
        ("plain forward + backward", plain),
        ("+ recording the forward", calls_and_plain_backward),
        ("+ backward order hooks", calls_and_backward_order),
        ("+ report (all of trace)", everything),
    ]
    base = None
    for label, step in steps:
        wall, host = timed(step, repeats)
        base = base or wall
        print(f"  {label:26s} {wall * 1e3:7.2f} ms  {wall / base:.3f}x   host {host * 1e3:6.2f} ms")


if __name__ == "__main__":
    main()
