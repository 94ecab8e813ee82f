"""FX tracing cost: bare torch.fx vs PyTorch's _ExecOrderTracer vs execorder.

Traces the transformer-shaped stack of ``sample_models/transformer.py`` (nine
modules a block) built on the meta device, at several depths, in one process,
interleaving the three contenders and keeping each one's best of N runs.

    make bench            # or: python benchmarks/bench_fx.py --blocks 64 128 256 512
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

import torch  # noqa: E402
import torch.fx  # noqa: E402
from torch.distributed.fsdp._trace_utils import _ExecOrderTracer  # noqa: E402

import execorder  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "sample_models"))
from transformer import Transformer  # noqa: E402


def bare_fx(model: torch.nn.Module) -> None:
    torch.fx.Tracer().trace(model)


def pytorch_exec_order(model: torch.nn.Module) -> None:
    tracer = torch.fx.Tracer()
    with _ExecOrderTracer().patch_tracer(tracer=tracer, root_module=model):
        tracer.trace(model)


def execorder_trace(model: torch.nn.Module) -> None:
    execorder.trace(model)


CONTENDERS: dict[str, Callable[[torch.nn.Module], None]] = {
    "torch.fx (bare)": bare_fx,
    "_ExecOrderTracer": pytorch_exec_order,
    "execorder": execorder_trace,
}


def python_calls(fn: Callable[[torch.nn.Module], None], model: torch.nn.Module) -> int:
    """Python function calls made by ``fn(model)``: a noise-free measure of work."""
    profile = cProfile.Profile()
    profile.runcall(fn, model)
    return pstats.Stats(profile).total_calls  # type: ignore[attr-defined, no-any-return]


def best_of(fn: Callable[[torch.nn.Module], None], model: torch.nn.Module) -> float:
    gc.collect()
    start = time.perf_counter()
    fn(model)
    return time.perf_counter() - start


def solo(blocks: int, repeats: int) -> float:
    """Best execorder time in this process, with no other contender's heap around."""
    with torch.device("meta"):
        model = Transformer(n_layers=blocks)
    return min(best_of(execorder_trace, model) for _ in range(repeats))


def solo_in_fresh_process(blocks: int, repeats: int) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--solo", str(blocks), "--repeats", str(repeats)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--solo", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.solo:
        print(solo(args.solo, args.repeats))
        return

    times: dict[int, dict[str, float]] = {}
    for blocks in args.blocks:
        with torch.device("meta"):
            model = Transformer(n_layers=blocks)
        modules = sum(1 for _ in model.modules())
        best = dict.fromkeys(CONTENDERS, float("inf"))
        for _ in range(args.repeats):
            for name, fn in CONTENDERS.items():
                best[name] = min(best[name], best_of(fn, model))
        times[blocks] = best
        row = "  ".join(f"{name} {t:7.3f}s" for name, t in best.items())
        row += f"  (execorder {best['execorder'] / blocks * 1e3:.2f} ms/block)"
        print(f"{blocks:4d} blocks ({modules:5d} modules): {row}", flush=True)

    print()
    print(f"{'blocks':>6}  {'execorder / bare fx':>20}  {'_ExecOrderTracer / bare fx':>27}")
    for blocks, best in times.items():
        bare = best["torch.fx (bare)"]
        print(
            f"{blocks:6d}  {best['execorder'] / bare:20.2f}  "
            f"{best['_ExecOrderTracer'] / bare:27.2f}"
        )
    low, high = min(times), max(times)
    if high > low:
        print()
        print(
            f"growth from {low} to {high} blocks ({high / low:.0f}x the model; linear is "
            f"{high / low:.0f}x):"
        )
        for name in CONTENDERS:
            print(f"  {name:18s} {times[high][name] / times[low][name]:6.1f}x")
        # The contenders share one heap above; bare torch.fx leaves a large one
        # behind, which slows whoever runs next. Growth of execorder on its own:
        alone = {b: solo_in_fresh_process(b, args.repeats) for b in (low, high)}
        print(
            f"  execorder alone (fresh process per size): {alone[low]:.3f}s -> "
            f"{alone[high]:.3f}s = {alone[high] / alone[low]:.1f}x"
        )
        work = {}
        for blocks in (low, high):
            with torch.device("meta"):
                model = Transformer(n_layers=blocks)
            work[blocks] = python_calls(execorder_trace, model)
        print(
            f"  execorder work (Python calls, noise-free): {work[low]:,} -> {work[high]:,} = "
            f"{work[high] / work[low]:.1f}x"
        )


if __name__ == "__main__":
    main()
