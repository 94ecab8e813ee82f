"""Recording overhead on a GPU: execorder's eager trace vs the plain model.

A 0.85 B-parameter Llama (sample_models/llama.py: hidden 2048, 14 layers,
MLP 5632, vocabulary 32000) in bfloat16, batch 4 x 512 tokens, on CUDA.
Measures, side by side in one process and interleaved, the median of N timed
runs after warm-up: the plain forward (under no_grad, and with autograd on,
which the recorded forward needs for liveness), plain forward + backward, and
execorder's recording of each: the whole ``eager.trace`` call (module-call
wrappers, recording parameters, gradient hooks, liveness, the report).
Target: at most 1.10x for forward + backward. ``--breakdown`` adds the cost
of each part of the recording in turn.

    python benchmarks/bench_gpu.py [--breakdown]     # needs a CUDA device
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


def timed(fns: list[Callable[[], object]], repeats: int) -> list[tuple[float, float]]:
    """Run ``fns`` interleaved, ``repeats`` times each after warm-up.

    Returns, for each, the median wall time (to the GPU's finish) and the
    median host time (to return). Interleaving spreads any drift of the
    machine's speed over all of them alike.
    """
    for fn in fns:
        for _ in range(3):
            fn()
    torch.cuda.synchronize()
    wall: list[list[float]] = [[] for _ in fns]
    host: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            host[i].append(time.perf_counter() - start)
            torch.cuda.synchronize()
            wall[i].append(time.perf_counter() - start)
    return [(statistics.median(w), statistics.median(h)) for w, h in zip(wall, host, strict=True)]


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

    def forward_with_autograd() -> None:
        model(ids)

    # Five rounds, each interleaved, so the spread between them shows the noise.
    repeats = 30
    rows = [
        ("forward (no_grad)", forward, recorded_forward),
        ("forward (autograd)", forward_with_autograd, recorded_forward),
        ("forward + backward", forward_backward, recorded_forward_backward),
    ]
    print(
        f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
        f"{params / 1e9:.2f} B parameters, bf16, batch 4 x 512, median of {repeats}"
    )
    for round_ in range(1, 6):
        for label, plain, recorded in rows:
            (plain_s, plain_host), (recorded_s, recorded_host) = timed([plain, recorded], repeats)
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
    tree = eager.module_tree(model)

    def recorded_calls() -> torch.Tensor:
        with eager._recording(model, tree, []):
            return model(ids)

    def calls_and_plain_backward() -> None:
        recorded_calls().float().sum().backward()
        model.zero_grad(set_to_none=True)

    def calls_and_backward_order() -> None:
        eager.backward_order(recorded_calls(), tree.params)
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
    results = timed([step for _, step in steps], repeats)
    base = results[0][0]
    for (label, _), (wall, host) in zip(steps, results, strict=True):
        print(f"  {label:26s} {wall * 1e3:7.2f} ms  {wall / base:.3f}x   host {host * 1e3:6.2f} ms")


if __name__ == "__main__":
    main()
