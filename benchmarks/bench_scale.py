"""End-to-end cost of tracing models at real sizes eagerly on the meta device.

First, side by side in one run: the 70B-shaped model traced by the command
line (process start to JSON written) against the bare work it stands on, a
Python process that imports torch, builds the model on meta and runs its
forward on meta inputs. Both load compiled bytecode (a cache in a temporary
folder, filled by a first run), as an installed package does; runs
alternate, and the medians are compared. Target: at most 1.05x. The bare
process is measured twice, ending as Python ends (tearing down the model)
and ending at once as the ``execorder`` program does (``os._exit``), so the
ratio of the work alone is shown too.

A Llama-2-70B-shaped model, and mixture-of-experts models at transformers'
default configs: Mixtral-8x7B (with its fused experts kernel, and with the
per-expert loop that routes on values), Qwen3-MoE and gpt-oss-120b. Runs the
real command line in a child process (process start to JSON written) and
reads the child's wall time and peak resident memory from the kernel
(``os.wait4``, the figures GNU ``time -v`` prints). Targets: 12 s and 1.5 GB
for the 70B model on a 2-core machine (building it on CPU would need about
276 GB), and twice the time for its ``--memory`` (two training steps, with
2048 tokens), 30 s and 1.5 GB for one FSDP2 rank's ``fsdp --memory`` of it
over 64 ranks and for each mixture of experts, and the same for
torchtitan's Llama3 8B, 70B and 405B and DeepSeek-V3 671B (built from its
registry, with 2048 tokens and the attention masks its trainer makes;
``--torchtitan`` runs only these), DeepSeek-V3's ``--memory`` included (one
FSDP2 rank of 256 within 60 s).

    make bench            # or: python benchmarks/bench_scale.py
"""

from __future__ import annotations

import json
import os
import statistics
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
TITAN_TOKENS = "tokens=int64[1,2048]@0:32000"
TITANS = tuple(
    (
        f"torchtitan {registry} {flavor}",
        [f"torchtitan.models.{registry}:model_registry", "-i", f"flavor={flavor}",
         "--input", TITAN_TOKENS],
    )
    for registry, flavor in (("llama3", "8B"), ("llama3", "70B"), ("llama3", "405B"),
                             ("deepseek_v3", "671B"))
)  # fmt: skip


def run(
    extra: list[str], target: list[str] | None = None, command_name: str = "trace"
) -> tuple[float, float, dict[str, Any]]:
    """Wall seconds, peak RSS in GB, and the report (or plan), of one execorder run."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "llama70b.json"
        command = [
            sys.executable,
            "-m",
            "execorder",
            command_name,
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


BARE = (
    "import sys, torch\n"
    f"sys.path.insert(0, {str(ROOT / 'sample_models')!r})\n"
    "from llama import llama2_70b\n"
    "with torch.device('meta'):\n"
    "    model = llama2_70b()\n"
    "model(torch.zeros(1, 32, dtype=torch.int64, device='meta'))\n"
)
SIDE_BY_SIDE_RUNS = 7
BUDGET = 1.05


def _timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one child process."""
    start = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(
            f"{command[:4]} failed: {child.stderr.read().decode() if child.stderr else ''}"
        )
    return wall, usage.ru_utime + usage.ru_stime


def side_by_side(runs: int = SIDE_BY_SIDE_RUNS) -> None:
    """The command line on the 70B shape against the bare import+build+forward, alternating."""
    with tempfile.TemporaryDirectory() as folder:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(Path(folder) / "pycache")
        out = str(Path(folder) / "report.json")
        commands = {
            "bare import+build+forward": [sys.executable, "-c", BARE],
            "  the same, ending at once": [sys.executable, "-c", BARE + "import os; os._exit(0)\n"],
            "execorder trace": [
                sys.executable, "-m", "execorder", "trace", TARGET, "--mode", "eager",
                "--input", "input_ids=int64[1,32]", "--format", "json", "--output", out,
            ],
        }  # fmt: skip
        for command in commands.values():  # fills the bytecode cache
            _timed(command, env)
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        for _ in range(runs):
            for name, command in commands.items():
                times[name].append(_timed(command, env))
    median = {
        name: (statistics.median(w for w, _ in t), statistics.median(c for _, c in t))
        for name, t in times.items()
    }
    bare, quick, ours = (median[name] for name in commands)
    print(f"Llama-2-70B shape on meta, side by side ({runs} runs each, alternating; medians)")
    for name, (wall, cpu) in median.items():
        print(f"  {name:28s} {wall:5.2f} s wall  {cpu:5.2f} s CPU")
    ratio = ours[0] / bare[0]
    print(
        f"  execorder / bare: {ratio:.2f}x wall, {ours[1] / bare[1]:.2f}x CPU"
        f"  [{'within' if ratio <= BUDGET else 'OVER'} {BUDGET:g}x]"
    )
    print(
        f"  execorder / bare ending at once (the work alone): {ours[0] / quick[0]:.2f}x wall, "
        f"{ours[1] / quick[1]:.2f}x CPU"
    )


def at_size(label: str, target: list[str], what: str) -> None:
    """One large model on meta, forward + --backward, against the time and memory targets.

    ``what``: the report's summary count shown after the parameters and calls.
    """
    wall, peak, report = run(["--backward"], target)
    summary = report["summary"]
    ok = wall <= MOE_LIMIT_S and peak <= LIMIT_GB
    shown = {
        "assumed": f"{summary.get('params_on_assumption', 0)} parameters on a routing assumption",
        "dead": f"{summary['params_dead']} dead",
    }[what]
    print(
        f"{label}, forward + --backward: {wall:.1f} s, peak {peak:.2f} GB "
        f"({summary['numel_total'] / 1e9:.1f}B parameters, {summary['calls']} module calls, "
        f"{shown})  [{'within' if ok else 'OVER'} {MOE_LIMIT_S:g} s / {LIMIT_GB:g} GB]"
    )


def memory_line(
    label: str, target: list[str], extra: list[str], limit_s: float, command_name: str = "trace"
) -> None:
    """One ``--memory`` run at size, against its time target and the 1.5 GB memory target."""
    wall, peak, document = run(extra, target, command_name=command_name)
    memory = document["memory"]
    ok = wall <= limit_s and peak <= LIMIT_GB
    whose = "one rank's" if command_name == "fsdp" else "the step's"
    print(
        f"{label}: {wall:.1f} s, peak RSS {peak:.2f} GB; {whose} peak "
        f"{memory['peak_bytes'] / 2**30:,.1f} GiB at {memory['peak_at']['phase']}"
        f"  [{'within' if ok else 'OVER'} {limit_s:g} s / {LIMIT_GB:g} GB]"
    )


def titans() -> None:
    """torchtitan's models on meta at their real sizes, with its trainer's attention masks."""
    try:
        import torchtitan  # noqa: F401
    except ImportError:
        print("torchtitan models: skipped (needs torchtitan and triton)")
        return
    for label, target in TITANS:
        at_size(f"{label}, on meta with 2048 tokens", target, "dead")
    deepseek = TITANS[-1][1]
    memory_line("torchtitan deepseek_v3 671B, --memory on meta", deepseek, ["--memory"], 30.0)
    memory_line(
        "torchtitan deepseek_v3 671B, fsdp --memory, its layout over 256 ranks in bf16",
        deepseek,
        ["--layout", "torchtitan", "--world-size", "256", "--param-dtype", "bfloat16", "--memory"],
        MOE_LIMIT_S * 2,
        command_name="fsdp",
    )


def main() -> None:
    if "--torchtitan" in sys.argv:
        titans()
        return
    side_by_side()
    for label, extra in (("forward", []), ("forward + --backward", ["--backward"])):
        wall, peak, report = run(extra)
        summary = report["summary"]
        ok = wall <= LIMIT_S and peak <= LIMIT_GB
        print(
            f"Llama-2-70B shape, eager on meta, {label}: {wall:.1f} s, peak {peak:.2f} GB "
            f"({summary['numel_total'] / 1e9:.1f}B parameters, {summary['calls']} module calls)"
            f"  [{'within' if ok else 'OVER'} {LIMIT_S:g} s / {LIMIT_GB:g} GB]"
        )
    tokens = [TARGET, "--input", "input_ids=int64[1,2048]@0:32000"]
    memory_line(
        "Llama-2-70B shape, --memory on meta with 2048 tokens (two AdamW training steps)",
        tokens,
        ["--memory"],
        LIMIT_S * 2,
    )
    memory_line(
        "Llama-2-70B shape, fsdp --memory over 64 ranks in bf16 (FSDP2 itself on meta)",
        tokens,
        ["--world-size", "64", "--param-dtype", "bfloat16", "--memory"],
        MOE_LIMIT_S,
        command_name="fsdp",
    )
    try:
        import transformers  # noqa: F401
    except ImportError:
        print("mixture-of-experts models: skipped (needs transformers: pip install execorder[hf])")
        return
    for label, target in MOES:
        at_size(f"{label}, eager on meta", target, "assumed")
    titans()


if __name__ == "__main__":
    main()
