"""End-to-end cost of tracing a Llama-2-70B-shaped model eagerly on the meta device.

Runs the real command line in a child process (process start to JSON
written) and reads the child's wall time and peak resident memory from the
kernel (``os.wait4``, the figures GNU ``time -v`` prints). Targets: 12 s and
1.5 GB on a 2-core machine; building the model on CPU would need about 276 GB.

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

ROOT = Path(__file__).resolve().parent.parent
TARGET = f"{ROOT}/sample_models/llama.py:llama2_70b"
LIMIT_S, LIMIT_GB = 12.0, 1.5


def run(extra: list[str]) -> tuple[float, float, dict[str, object]]:
    """Wall seconds, peak RSS in GB, and the report, of one execorder run."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "llama70b.json"
        command = [
            sys.executable,
            "-m",
            "execorder",
            "trace",
            TARGET,
            "--mode",
            "eager",
            "--input",
            "input_ids=int64[1,32]",
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


if __name__ == "__main__":
    main()
