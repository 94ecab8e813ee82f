"""What ``--timing`` costs: a forward plain, recorded, and recorded with timing, side by side.

The 24-block sample transformer (``sample_models/transformer.py``, width 256)
runs forward on CPU: bare, inside ``execorder.record`` (untimed, as today),
and inside ``execorder.record(timing=True)``, interleaved round by round;
median of 30 forwards each. Ratios are to the bare forward.

    python benchmarks/bench_timing.py      # part of make bench
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "sample_models"))

from transformer import Transformer

import execorder

ROUNDS = 30


def main() -> None:
    torch.manual_seed(0)
    model = Transformer(vocab=1000, dim=256, n_heads=4, n_layers=24)
    ids = torch.randint(0, 1000, (4, 64))

    def bare() -> None:
        with torch.no_grad():
            model(ids)

    def recorded(timing: bool) -> None:
        with torch.no_grad(), execorder.record(model, timing=timing):
            model(ids)

    runs = {
        "bare": bare,
        "record()": lambda: recorded(False),
        "record(timing=True)": lambda: recorded(True),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        run()  # warm up
    for _ in range(ROUNDS):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["bare"])
    calls = len(execorder.profile(model, inputs=ids).report.modules)
    print(f"forward of a {calls}-call transformer on CPU, median of {ROUNDS}, interleaved")
    for name, spent in times.items():
        median = statistics.median(spent)
        print(f"  {name:<22} {median * 1e3:7.2f} ms  {median / base:5.2f}x bare")


if __name__ == "__main__":
    main()
