"""The memory of a training step, on every transformers architecture, against PyTorch's own count.

For every model type of transformers' causal-LM auto mapping (``--task`` picks
others), built from its default config with 2 layers and small widths (as
``bench_meta.py`` builds them; where small widths break the config, fewer
experts, then the default widths if they train on CPU), with ``input_ids``
[1, 16]:

1. **truth**: two real training steps on CPU (forward, backward of the
   summed floating outputs, AdamW's step, ``foreach``), uninstrumented, as
   the CPU allocator records them (``torch.profiler``): its peak, which also
   counts kernels' workspace;
2. **MemTracker**: PyTorch's ``MemTracker``
   (``torch.distributed._tools.mem_tracker``) on the same two steps, where it
   can follow the model (it fails on some models' hooks and on frozen
   parameters). It sees the step under a dispatch mode, as execorder does,
   where the autograd engine sums two gradients of one tensor out of place,
   so it is shown beside the truth, not taken for it;
3. **cpu**: what ``trace --memory --device cpu`` measures of the same two
   steps (``execorder.profile(..., memory="adamw")``: the model built by
   execorder, seeded as the truth's, on the same inputs): equal to the byte,
   under it by kernels' workspace only (at most 0.01%), within PyTorch's own
   10%, or OFF;
4. **meta**: the same on meta (``--device meta``: no memory, never rebuilt on
   CPU): equal to the CPU measure, or above it where routing was assumed and
   said (every token to every expert), or DIFFERS.

A model that fails on CPU at every config tried is counted as such, not as
execorder's failure.

    python benchmarks/bench_memory.py [--task causal] [--only TYPE,TYPE] [--jobs N] [--json FILE]
"""

from __future__ import annotations

import resource
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]  # the tests' real training step

import models  # noqa: E402
from bench_meta import (  # noqa: E402
    MEMORY_CAP,
    TASKS,
    _build,
    _reason,
    finish,
    inputs,
    jobs,
    options,
    run,
)

CPU_BYTES = 3e8  # a config trained on CPU here: at most this many parameter bytes
TOLERANCE = 0.10  # PyTorch's own tracker tests' tolerance against the CUDA allocator
WORKSPACE = 1e-4  # under the allocator's record by at most this: kernels' workspace


def _model(cls: Any, config: Any, device: str = "cpu") -> Any:
    import torch

    torch.manual_seed(0)
    with torch.device(device):
        return cls(config)


def _allocated(cls: Any, config: Any, given: dict[str, Any]) -> int:
    """The CPU allocator's peak over the two steps, as ``torch.profiler`` records it."""
    import torch

    model = _model(cls, config)
    stepper = torch.optim.AdamW(model.parameters(), foreach=True)

    def steps() -> None:
        torch.manual_seed(1)
        made = {k: v.clone() for k, v in given.items()}
        models.train_two_steps(model, (), stepper, kwargs=made)

    return models.allocator_peak((*model.parameters(), *model.buffers()), steps)


def survey(job: tuple[str, str, str]) -> dict[str, Any]:
    """Every measurement of one model type; never raises."""
    task, model_type, class_name = job
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, resource.RLIM_INFINITY))
    import torch
    import transformers
    from torch.distributed._tools.mem_tracker import MemTracker

    import execorder
    from execorder.loading.memory import model_bytes

    transformers.logging.set_verbosity_error()
    found: dict[str, Any] = {"task": task, "type": model_type, "class": class_name}
    why = ""
    # Small widths first; where they break the config, fewer experts, then the default
    # widths (layers cut to 2) when those are small enough to train on CPU.
    for small in (True, "experts", False):
        try:
            cls, config = _build(task, model_type, class_name, small=small)
            with torch.device("meta"):
                if model_bytes(cls(config)) > CPU_BYTES:
                    why = why or "too big to train on CPU"
                    continue
            given = inputs(task, config)
            model = _model(cls, config)
            models.train_two_steps(
                model, (), torch.optim.AdamW(model.parameters(), foreach=True), kwargs=given
            )
            found["config"] = {True: "small", "experts": "fewer experts", False: "default"}[small]
            break
        except Exception as exc:
            why = why or _reason(exc)
    else:
        found["broken"] = f"fails on CPU: {why}"
        return found
    del model
    try:
        found["truth"] = _allocated(cls, config, given)
    except Exception as exc:
        found["broken"] = f"the allocator's record failed: {_reason(exc)}"
        return found
    try:
        model = _model(cls, config)
        stepper = torch.optim.AdamW(model.parameters(), foreach=True)
        tracker = MemTracker()
        tracker.track_external(model, stepper)
        with tracker:  # the inputs made inside, as execorder counts them
            torch.manual_seed(1)
            made = {k: v.clone() for k, v in given.items()}
            models.train_two_steps(model, (), stepper, tracker.reset_mod_stats, kwargs=made)
        found["tracker"] = int(tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"])
    except Exception as exc:
        found["tracker_why"] = _reason(exc)
    for device in ("cpu", "meta"):  # as trace --memory runs: built by execorder, seeded 0
        try:
            made = execorder.profile(
                lambda: cls(config), inputs=given, device=device, memory="adamw", seed=0
            )
            memory = made.report.memory
            assert memory is not None
            found[device] = memory.peak_bytes
            found["assumed"] = found.get("assumed", False) or bool(memory.assumed)
        except Exception as exc:
            found[f"{device}_why"] = _reason(exc)
    # Layers dropped or experts chosen at random in training: each run its own structure.
    found["random"] = any(
        isinstance(value, (int, float)) and value > 0
        for key in ("encoder_layerdrop", "decoder_layerdrop", "layerdrop", "router_jitter_noise")
        for value in [getattr(config, key, 0)]
    )
    return found


def verdicts(found: dict[str, Any]) -> tuple[str, str]:
    """The CPU measure against the truth, and meta against the CPU measure."""
    truth, cpu, meta = found.get("truth"), found.get("cpu"), found.get("meta")
    if found.get("random"):
        return "random", "random"
    if cpu is None:
        on_cpu = "failed"
    elif cpu == truth:
        on_cpu = "exact"
    elif 0 < truth - cpu <= WORKSPACE * truth:
        on_cpu = "workspace"
    else:
        on_cpu = "close" if abs(cpu - truth) <= TOLERANCE * truth else "OFF"
    if meta is None:
        # Forward reads a value computed from parameters: meta says so (and runs on CPU).
        needs = str(found.get("meta_why", "")).startswith("MetaDeviceError")
        on_meta = "needs values" if needs else "failed"
    elif cpu is None:
        on_meta = "unchecked"
    elif meta == cpu:
        on_meta = "same"
    else:
        on_meta = "assumed" if found.get("assumed") and meta >= cpu else "DIFFERS"
    return on_cpu, on_meta


def _line(found: dict[str, Any]) -> str:
    if "broken" in found:
        return f"  {found['task']:8} {found['type']:28} {found['broken'][:90]}"
    on_cpu, on_meta = verdicts(found)
    gap = ""
    if found.get("cpu") is not None:
        gap = f"{found['cpu'] - found['truth']:+,} B"
    return f"  {found['task']:8} {found['type']:28} cpu={on_cpu:6} {gap:>14}  meta={on_meta}"


def summarize(results: list[dict[str, Any]]) -> str:
    """The counts, by outcome, and every miss with its numbers."""
    usable = [r for r in results if "broken" not in r]
    judged = [(r, *verdicts(r)) for r in usable]
    cpu = Counter(v for _, v, _ in judged)
    meta = Counter(v for _, _, v in judged)
    configs = Counter(r["config"] for r in usable)
    compared = [r for r, v, _ in judged if v != "random" and "cpu" in r]
    workspace = [r["truth"] - r["cpu"] for r, v, _ in judged if v == "workspace"]
    gaps = [abs(r["cpu"] - r["truth"]) / r["truth"] for r, v, _ in judged if v == "close"]
    tracked = [r for r in compared if "tracker" in r]
    tracker_equal = sum(r["tracker"] == r["cpu"] for r in tracked)
    tracker_over = [r for r in tracked if r["tracker"] > r["cpu"]]
    over = [r["tracker"] - r["cpu"] for r in tracker_over]
    lines = [
        f"transformers model types: {len(results)}; {len(results) - len(usable)} fail on CPU "
        "at every config tried, or are too big to train there (not counted)",
        f"of the other {len(usable)} ({configs['small']} small, {configs['fewer experts']} "
        f"with fewer experts, {configs['default']} at their default widths), execorder's "
        "measure of two real CPU steps against the CPU allocator's record of them:",
        f"  {cpu['exact']} equal to the byte, {cpu['workspace']} under it by at most "
        f"{max(workspace, default=0):,} bytes (allocations outside the tensors ops return: "
        f"kernels' workspace), {cpu['close']} within 10% (at most {max(gaps, default=0):.2%}), "
        f"{cpu['OFF']} OFF, {cpu['failed']} failed",
        f"  MemTracker, where it follows the model ({len(tracked)}): equal to execorder on "
        f"{tracker_equal}, above it on {len(tracker_over)} by up to {max(over, default=0):,} "
        f"bytes ({', '.join(r['type'] for r in tracker_over) or 'none'})",
    ]
    randomly = [r["type"] for r, v, _ in judged if v == "random"]
    if randomly:
        lines.append(
            f"  not compared: {len(randomly)} that drop layers or route at random in training "
            f"(each run its own structure): {', '.join(randomly)}"
        )
    lines.append(
        f"on meta, against the CPU measure: {meta['same']} equal, {meta['assumed']} above it "
        f"on a stated routing assumption, {meta['DIFFERS']} DIFFER, {meta['needs values']} "
        f"refused saying forward needs values computed from parameters, {meta['failed']} failed"
    )
    for r, on_cpu, on_meta in judged:
        if on_cpu not in ("exact", "workspace", "random") or on_meta not in (
            "same",
            "assumed",
            "random",
        ):
            tracker = f", MemTracker {r['tracker']:,}" if "tracker" in r else ""
            lines.append(
                f"    {r['type']}: allocator {r['truth']:,}{tracker}, "
                f"cpu {r.get('cpu', r.get('cpu_why'))}, meta {r.get('meta', r.get('meta_why'))}"
            )
    return "\n".join(lines)


def main() -> None:
    parser = options(__doc__)
    parser.add_argument("--task", choices=sorted(TASKS), default="causal")
    args = parser.parse_args()
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise SystemExit("bench_memory needs transformers (pip install execorder[hf])") from None
    todo = jobs(set(args.only.split(",")) if args.only else None, (args.task,))
    start = time.perf_counter()
    results = run(todo, args.jobs, work=survey, failed=lambda why: {"broken": why}, line=_line)
    finish(args, results, summarize(results), start)


if __name__ == "__main__":
    main()
