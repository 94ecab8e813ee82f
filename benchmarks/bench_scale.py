"""End-to-end cost of tracing models at real sizes eagerly on the meta device.

A Llama-2-70B-shaped model, and mixture-of-experts models at transformers'
default configs: Mixtral-8x7B (with its fused experts kernel, and with the
per-expert loop that routes on values), Qwen3-MoE and gpt-oss-120b. Runs the
real command line in a child process (process start to JSON written) and
reads the child's wall time and peak resident memory from the kernel
(``os.wait4``, the figures GNU ``time -v`` prints). Targets: 12 s and 1.5 GB
for the 70B model on a 2-core machine (building it on CPU would need about
276 GB), 30 s and 1.5 GB for each mixture of experts.

    make bench            # or: python benchmarks/bench_scale.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TARGET = f"{ROOT}/sample_models/llama.py:llama2_70b"
LIMIT_S, LIMIT_GB = 12.0, 1.5
MOE_LIMIT_S = 30.0
HF = f"{ROOT}/sample_models/hf.py"
IDS = "input_ids=int64[1,32]@0:32000"
MOES = (
    ("Mixtral-8x7B (grouped_mm experts)", [f"{HF}:mixtral_8x7b", "--input", IDS]),
    (
        "Mixtral-8x7B (eager experts loop)",
        [f"{HF}:mixtral_8x7b", "-i", "experts=eager", "--input", IDS],
    ),
    ("Qwen3-MoE (default config)", [f"{HF}:qwen3_moe", "--input", IDS]),
    ("gpt-oss-120b (default config)", [f"{HF}:gpt_oss_120b", "--input", IDS]),
)


def run(extra: list[str], target: list[str] | None = None) -> tuple[float, float, dict[str, Any]]:
    """Wall seconds, peak RSS in GB, and the report, of one execorder run."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "llama70b.json"
        command = [
            sys.executable,
            "-m",
            "execorder",
            "trace",
            *(target or [TARGET, "--mode", "eager", "--input", "input_ids=int64[1,32]"]),
            "--format",
            "json",
            "--output",
            str(out),
            *extra,
        ]
        start = time.perf_counter()
        child = subprocess.Popen(command, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(
                f"execorder failed: {child.stderr.read().decode() if child.stderr else ''}"
            )
        peak_kb = usage.ru_maxrss if sys.platform != "darwin" else usage.ru_maxrss / 1024
        return wall, peak_kb / 1024**2, json.loads(out.read_text())


def main() -> None:
    for label, extra in (("forward", []), ("forward + --backward", ["--backward"])):
        wall, peak, report = run(extra)
        summary = report["summary"]
        ok = wall <= LIMIT_S and peak <= LIMIT_GB
        print(
            f"Llama-2-70B shape, eager on meta, {label}: {wall:.1f} s, peak {peak:.2f} GB "
            f"({summary['numel_total'] / 1e9:.1f}B parameters, {summary['calls']} module calls)"
            f"  [{'within' if ok else 'OVER'} {LIMIT_S:g} s / {LIMIT_GB:g} GB]"
        )
    try:
        import transformers  # noqa: F401
    except ImportError:
        print("mixture-of-experts models: skipped (needs transformers: pip install execorder[hf])")
        return
    for label, target in MOES:
        wall, peak, report = run(["--backward"], target)
        summary = report["summary"]
        ok = wall <= MOE_LIMIT_S and peak <= LIMIT_GB
        assumed = summary.get("params_on_assumption", 0)
        print(
            f"{label}, eager on meta, forward + --backward: {wall:.1f} s, peak {peak:.2f} GB "
            f"({summary['numel_total'] / 1e9:.1f}B parameters, {summary['calls']} module calls, "
            f"{assumed} parameters on a routing assumption)"
            f"  [{'within' if ok else 'OVER'} {MOE_LIMIT_S:g} s / {LIMIT_GB:g} GB]"
        )


if __name__ == "__main__":
    main()
