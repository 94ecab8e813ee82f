"""The watch against real DDP, on every transformers causal-LM architecture.

For every model type of transformers' causal-LM auto mapping, built as
``bench_meta.py`` builds it (2 layers, small widths; fewer experts where
small widths break the config), two gloo ranks on this machine train it
with SGD under real ``DistributedDataParallel``, three steps of
``model(input_ids, labels=input_ids).loss.backward()``, in each setting:

- ``ddp``: ``find_unused_parameters=False`` (DDP's default);
- ``find-unused``: ``find_unused_parameters=True``;
- ``static``: ``static_graph=True``;
- ``reentrant``, ``reentrant-find-unused``, ``reentrant-static``: transformers'
  own gradient checkpointing with reentrant checkpoints
  (``gradient_checkpointing_enable({"use_reentrant": True})``), under each of
  DDP's settings (``static_graph=True`` for the last), for the models that
  support it.

Each setting runs twice, from the same seed: once as it is (the truth: does
DDP raise, and at which step), once with step 1 recorded by
``execorder.training.StepWatch``, as the trainers' callbacks record it. The
watch must stop step 1 exactly where the unwatched job raises at a later
step, naming the parameter indices DDP's own error names, and leave every
other job as it was:

- ``agree``: both run; or the job fails at step 2 or 3 and the watch stops
  step 1 (with DDP's indices, where DDP lists them);
- ``fails in step 1``: DDP raises in step 1 itself, watched or not (the watch
  cannot come first);
- ``MISSED``: the job fails later and the watch let step 1 pass;
- ``FALSE ALARM``: the job runs and the watch stopped it;
- ``CHANGED``: watched, the job did something it does not do unwatched.

Both ranks train on the same batch (a rank-dependent failure would hang the
other rank in an all-reduce that never pairs), so what is checked is the
gradients' presence, not the ranks' agreement (``tests/test_inside_job.py``
covers that). The ranks run under ``torchrun``; a model that takes longer
than the limit is counted as timed out and the survey goes on without it.

    python benchmarks/bench_ddp.py [--only TYPE,TYPE] [--json FILE]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE)]

from bench_meta import MEMORY_CAP, _build, _reason, inputs, jobs  # noqa: E402

SETTINGS: dict[str, tuple[bool, dict[str, bool]]] = {
    # name: (reentrant checkpoints, DDP's keyword arguments)
    "ddp": (False, {}),
    "find-unused": (False, {"find_unused_parameters": True}),
    "static": (False, {"static_graph": True}),
    "reentrant": (True, {}),
    "reentrant-find-unused": (True, {"find_unused_parameters": True}),
    "reentrant-static": (True, {"static_graph": True}),
}
STEPS = 3
CPU_BYTES = 2e8  # a config trained here on two ranks: at most this many parameter bytes
MODEL_TIMEOUT_S = 240  # one model, every setting, both runs
DDP_INDICES = re.compile(r"did not receive grad for rank \d+: ([\d ]+)")


@dataclass(frozen=True)
class Subject:
    """A model the ranks train: how it is built, a batch (by seed), the loss of its outputs,
    and how its blocks are checkpointed, reentrant or not (None where they cannot be)."""

    build: Callable[[], Any]
    batch: Callable[[int], dict[str, Any]]
    loss: Callable[[Any], Any]
    checkpoint: Callable[[Any, bool], None] | None = None


def causal_lm(cls: Any, config: Any) -> Subject:
    """A transformers causal LM, trained on its own tokens as labels."""

    def batch(seed: int) -> dict[str, Any]:
        found = inputs("causal", config, seed=seed)
        return {**found, "labels": found["input_ids"].clone()}

    def checkpoint(model: Any, reentrant: bool) -> None:
        model.gradient_checkpointing_enable({"use_reentrant": reentrant})

    checkpoints = getattr(cls, "supports_gradient_checkpointing", False)
    build = functools.partial(cls, config)
    return Subject(build, batch, lambda out: out.loss, checkpoint if checkpoints else None)


def _model(model_type: str, class_name: str) -> tuple[Subject | None, str]:
    """A causal LM that trains on CPU: small, else with fewer experts, else default."""
    import torch

    from execorder.loading.memory import model_bytes

    why = ""
    for small in (True, "experts", False):
        try:
            cls, config = _build("causal", model_type, class_name, small=small)
            with torch.device("meta"):
                size = model_bytes(cls(config))
            if size > CPU_BYTES:
                why = f"{size / 1e9:.1f} GB"
                continue
            subject = causal_lm(cls, config)
            torch.manual_seed(0)
            subject.build()(**subject.batch(0))
            return subject, ""
        except Exception as exc:
            why = _reason(exc)
    return None, why


def _job(subject: Subject, setting: str, watched: bool) -> dict[str, Any]:
    """Three steps under DDP in ``setting``, step 1 watched or not: how they ended."""
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP

    from execorder.errors import ExecOrderError, NoGradientError
    from execorder.training import StepWatch

    reentrant, settings = SETTINGS[setting]
    torch.manual_seed(0)
    model = subject.build()
    if reentrant and subject.checkpoint is not None:
        subject.checkpoint(model, True)
    model.train()
    job = DDP(model, **settings)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    watch = StepWatch(steps=(1,), stop_on_no_grad=None) if watched else None
    batch = subject.batch(0)
    torch.manual_seed(1)
    for step in range(1, STEPS + 1):
        try:
            if watch is not None and watch.wants(step):
                watch.begin(job, step)
            subject.loss(job(**batch)).backward()
            if watch is not None and watch.active:
                watch.end()
            optimizer.step()
            optimizer.zero_grad()
        except ExecOrderError as exc:
            ended: dict[str, Any] = {"stopped": step, "by": type(exc).__name__}
            if isinstance(exc, NoGradientError):
                ended["indices"] = sorted(i for i in exc.ddp_indices if i is not None)
            return ended
        except Exception as exc:
            if watch is not None:
                watch.abort()
            found = DDP_INDICES.search(str(exc))
            ended = {"failed": step, "why": _reason(exc)}
            if found:
                ended["indices"] = sorted(int(i) for i in found.group(1).split())
            return ended
    return {"ran": STEPS}


def verdict(truth: dict[str, Any], watched: dict[str, Any]) -> str:
    """What the watched job says of the real one."""
    if "ran" in truth:
        if "ran" in watched:
            return "agree"
        return "FALSE ALARM" if "stopped" in watched else "CHANGED"
    if truth["failed"] == 1:
        return "fails in step 1" if watched.get("failed") == 1 else "CHANGED"
    if watched.get("stopped") != 1:
        return "MISSED" if "ran" in watched or watched.get("failed", 1) > 1 else "CHANGED"
    if "indices" in truth and watched.get("indices") != truth["indices"]:
        return "OTHER INDICES"
    return "agree"


def survey(model_type: str, class_name: str) -> dict[str, Any]:
    """Every setting of one model type, on this rank; never raises."""
    found: dict[str, Any] = {"type": model_type, "class": class_name}
    subject, why = _model(model_type, class_name)
    if subject is None:
        return {**found, "broken": why}
    return {**found, "settings": settings(subject)}


def settings(subject: Subject) -> dict[str, Any]:
    """Every setting the subject trains in, unwatched and watched, and the verdict."""
    found = {}
    for setting, (reentrant, _) in SETTINGS.items():
        if reentrant and subject.checkpoint is None:
            continue
        truth = _job(subject, setting, watched=False)
        watched = _job(subject, setting, watched=True)
        found[setting] = {"truth": truth, "watched": watched, "verdict": verdict(truth, watched)}
    return found


def rank_main(
    todo: list[tuple[str, str]], out: Path, survey: Callable[[str, str], dict[str, Any]] = survey
) -> None:
    """One rank: every model in turn (``survey``), in step with the other rank; rank 0 writes
    lines."""
    import logging
    import warnings

    import torch.distributed as dist
    import transformers

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, resource.RLIM_INFINITY))
    warnings.filterwarnings("ignore")
    logging.getLogger("execorder").setLevel(logging.ERROR)
    transformers.logging.set_verbosity_error()
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank = dist.get_rank()
    for model_type, class_name in todo:
        found = survey(model_type, class_name)
        dist.barrier()
        if rank == 0:
            with out.open("a") as lines:
                lines.write(json.dumps(found) + "\n")
    dist.destroy_process_group()


def run(
    todo: list[tuple[str, str]],
    script: str = __file__,
    show: Callable[[dict[str, Any]], str] | None = None,
) -> list[dict[str, Any]]:
    """Every model, on two ranks under torchrun (``script --rank-of``, which calls
    :func:`rank_main`); a model past the limit is timed out and the ranks started again on
    the rest; one whose ranks died is tried once more in fresh ranks. ``show``: what is
    printed of each model as it comes."""
    results: list[dict[str, Any]] = []

    def took(found: dict[str, Any]) -> None:
        results.append(found)
        print((show or _line)(found), file=sys.stderr, flush=True)

    pending = list(todo)
    retried: set[tuple[str, str]] = set()
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "results.jsonl"
        while pending:
            (Path(scratch) / "todo.json").write_text(json.dumps(pending))
            out.write_text("")
            command = [
                sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", "2", script, "--rank-of", scratch,
            ]  # fmt: skip
            ranks = subprocess.Popen(command, start_new_session=True, stderr=subprocess.DEVNULL)
            done, last = 0, time.monotonic()
            while True:  # the ranks' lines as they come; stopped when they end, or stall
                ended = ranks.poll() is not None or time.monotonic() - last > MODEL_TIMEOUT_S
                if ended and ranks.poll() is None:
                    os.killpg(ranks.pid, signal.SIGKILL)
                    ranks.wait()
                lines = out.read_text().splitlines()
                for line in lines[done:]:
                    took(json.loads(line))
                    last = time.monotonic()
                done = len(lines)
                if ended:
                    break
                time.sleep(0.5)
            left = pending[done:]
            if left and ranks.returncode != -signal.SIGKILL and left[0] not in retried:
                retried.add(left[0])  # ranks that died after many models: once more, fresh
                pending = left
                continue
            if left:  # the first not written timed out, or its ranks died again
                model_type, class_name = left[0]
                why = "timed out" if ranks.returncode == -signal.SIGKILL else "the ranks died"
                took({"type": model_type, "class": class_name, "broken": why})
            pending = left[1:]
    return results


def _line(found: dict[str, Any]) -> str:
    if "broken" in found:
        return f"  {found['type']:28} not run: {found['broken'][:90]}"
    verdicts = " ".join(f"{s}={v['verdict']}" for s, v in found["settings"].items())
    return f"  {found['type']:28} {verdicts}"


def summarize(results: list[dict[str, Any]]) -> str:
    """Verdicts by setting, and every case that is not an agreement."""
    run_ = [r for r in results if "broken" not in r]
    lines = [
        f"  model types: {len(results)}; trained under DDP on 2 ranks: {len(run_)} "
        f"(the others fail on CPU, or are too big: not counted)"
    ]
    for setting in SETTINGS:
        cases = [r["settings"][setting] for r in run_ if setting in r["settings"]]
        counts = Counter(c["verdict"] for c in cases)
        failing = sum(1 for c in cases if "failed" in c["truth"])
        lines.append(
            f"  {setting:22} {len(cases):3} models, {failing:3} fail unwatched: "
            + ", ".join(f"{n} {v}" for v, n in counts.most_common())
        )
    wrong = [
        (r["type"], s, c)
        for r in run_
        for s, c in r["settings"].items()
        if c["verdict"] not in ("agree", "fails in step 1")
    ]
    for model_type, setting, case in wrong:
        lines.append(
            f"    {model_type} / {setting}: {case['verdict']}: "
            f"truth {case['truth']}, watched {case['watched']}"
        )
    return "\n".join(lines)


def command(
    doc: str,
    survey: Callable[[str, str], dict[str, Any]],
    show: Callable[[dict[str, Any]], str],
    summarize: Callable[[list[dict[str, Any]]], str],
    script: str,
    after: Callable[[list[dict[str, Any]]], None] | None = None,
    listed: Callable[[set[str] | None], list[tuple[str, str]]] | None = None,
) -> None:
    """The command line of a survey of models on two ranks (this one, bench_fsdp,
    bench_diffusers): ``survey`` on each rank of each model ``listed`` gives (every causal LM
    by default; ``--only`` names some), ``after`` on the results in this process, then the
    summary."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--only", help="comma-separated model types")
    parser.add_argument("--json", type=Path, help="also write every result here")
    parser.add_argument("--rank-of", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank_of:
        scratch = Path(args.rank_of)
        todo = [tuple(job) for job in json.loads((scratch / "todo.json").read_text())]
        rank_main(todo, scratch / "results.jsonl", survey)  # type: ignore[arg-type]
        return
    only = set(args.only.split(",")) if args.only else None
    start = time.perf_counter()
    results = run((listed or causal_lms)(only), script=script, show=show)
    if after is not None:
        after(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    print(summarize(results))
    print(f"  ({time.perf_counter() - start:.0f} s, 2 ranks)")


def causal_lms(only: set[str] | None) -> list[tuple[str, str]]:
    """Every causal LM type of transformers (those ``only`` names), with its class."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise SystemExit("needs transformers (pip install execorder[hf])") from None
    return [(model_type, name) for _, model_type, name in jobs(only, ("causal",))]


def main() -> None:
    command(__doc__ or "", survey, _line, summarize, __file__)


if __name__ == "__main__":
    main()
