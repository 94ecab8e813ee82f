"""execorder against a real backward, real DDP and real FSDP2, on diffusers' models.

diffusers' models are what diffusion training jobs shard and replicate:
UNets, a ControlNet, a VAE, DiT, PixArt, SD3, Flux, Chroma, AuraFlow,
Lumina 2, Sana, Qwen-Image, Wan, LTX-Video, CogVideoX, each built small
from a config of ``diffusion_models.py``, its loss the mean square of every
floating output. Two gloo ranks on this machine do, for each:

- **meta**: ``execorder.profile`` of the model with ``backward=True`` under
  the default policy (meta first), plain and with diffusers' own gradient
  checkpointing (``enable_gradient_checkpointing()``, non-reentrant), against
  a real backward on CPU: the parameters left without a gradient must be
  the same, and the run must stay on meta (``agree``; ``agree, on cpu``
  where it fell back, with why; ``DIFFER``);
- **DDP**: ``bench_ddp.py``'s settings (``find_unused_parameters`` either
  way, ``static_graph``; reentrant checkpoints under each), three steps
  unwatched and with step 1 recorded by ``StepWatch``, and its verdicts;
- **FSDP2**: ``bench_fsdp.py``'s, in the default ``blocks`` layout (the
  model's ``_no_split_modules``, else its repeated block class): the plan
  sharded by real ``fully_shard``, gradients against the plain model's
  averaged over the ranks, the watch, and one rank's peak against
  ``FSDPMemTracker``.

    python benchmarks/bench_diffusers.py [--only NAME,NAME] [--json FILE]
"""

from __future__ import annotations

import functools
import sys
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

import bench_ddp  # noqa: E402
import bench_fsdp  # noqa: E402
import diffusion_models  # noqa: E402
from bench_ddp import Subject  # noqa: E402
from bench_meta import _reason  # noqa: E402

LAYOUTS = ("blocks",)  # torchtitan's and accelerate's layouts are for transformers' decoders


def _checkpoint(model: Any, reentrant: bool) -> None:
    from torch.utils.checkpoint import checkpoint

    model.enable_gradient_checkpointing(functools.partial(checkpoint, use_reentrant=reentrant))


def subject(name: str) -> Subject:
    """The model of that name, as the ranks train it."""
    import diffusers

    class_name = diffusion_models.MODELS[name][0]
    checkpoints = getattr(diffusers, class_name)._supports_gradient_checkpointing
    return Subject(
        functools.partial(diffusion_models.build, name),
        functools.partial(diffusion_models.batch, name),
        diffusion_models.loss,
        _checkpoint if checkpoints else None,
    )


def on_meta(model: Subject, checkpointed: bool) -> dict[str, Any]:
    """execorder's parameters without a gradient, under the default policy, against a real
    backward's."""
    import torch

    import execorder

    def build() -> Any:
        built = model.build()
        if checkpointed:
            assert model.checkpoint is not None
            model.checkpoint(built, False)
        return built.train()

    torch.manual_seed(0)
    real = build()
    model.loss(real(**model.batch(0))).backward()
    truth = {n for n, p in real.named_parameters() if p.requires_grad and p.grad is None}
    result = execorder.profile(build, inputs=lambda: model.batch(0), backward=True)
    said = {p.name for p in result.report.no_grad()}
    found: dict[str, Any] = {"no_grad": len(truth), "device": result.device}
    if said != truth:
        found |= {"only_real": sorted(truth - said)[:5], "only_said": sorted(said - truth)[:5]}
        found["verdict"] = "DIFFER"
    elif result.device != "meta":
        found["verdict"] = "agree, on cpu"
        found["why"] = "; ".join(note.reason for note in result.notes)[:200]
    else:
        found["verdict"] = "agree"
    return found


def survey(name: str, class_name: str) -> dict[str, Any]:
    """One model on this rank: on meta, under DDP, sharded by its plan; never raises."""
    found: dict[str, Any] = {"type": name, "class": class_name}
    model = subject(name)
    try:
        ways = (False, True) if model.checkpoint is not None else (False,)
        found["meta"] = {"checkpointed" if way else "plain": on_meta(model, way) for way in ways}
        found["settings"] = bench_ddp.settings(model)
    except Exception as exc:
        return {**found, "broken": _reason(exc)}
    return {**found, **bench_fsdp.layouts(model, LAYOUTS)}


def listed(only: set[str] | None) -> list[tuple[str, str]]:
    """The models of diffusion_models.py (those ``only`` names), with their classes."""
    try:
        import diffusers  # noqa: F401
    except ImportError:
        raise SystemExit("needs diffusers (pip install diffusers)") from None
    if only and (unknown := only - set(diffusion_models.MODELS)):
        raise SystemExit(f"no such model: {', '.join(sorted(unknown))}")
    return [(n, c) for n, (c, _, _) in diffusion_models.MODELS.items() if not only or n in only]


def _after(results: list[dict[str, Any]]) -> None:
    bench_fsdp.measure_plans(results, subject_of=lambda name, _: subject(name))


def _line(found: dict[str, Any]) -> str:
    if "broken" in found:
        return f"  {found['type']:14} not run: {found['broken'][:100]}"
    meta = " ".join(f"{way}={case['verdict']}" for way, case in found["meta"].items())
    ddp = " ".join(f"{s}={c['verdict']}" for s, c in found["settings"].items())
    return f"  {found['type']:14} meta: {meta}\n{'':16} DDP: {ddp}\n" + bench_fsdp._line(
        found
    ).replace(f"  {found['type']:28} ", f"{'':16} FSDP2 ")


def summarize(results: list[dict[str, Any]]) -> str:
    """On meta, under DDP, sharded: the verdicts, and every case that is not an agreement."""
    ran = [r for r in results if "broken" not in r]
    lines = [f"  models: {len(results)}; run: {len(ran)}", "  on meta, against a real backward:"]
    for way in ("plain", "checkpointed"):
        cases = [(r["type"], r["meta"][way]) for r in ran if way in r["meta"]]
        counts = Counter(c["verdict"] for _, c in cases)
        lines.append(f"    {way:13} {', '.join(f'{n} {v}' for v, n in counts.most_common())}")
        lines += [f"      {t}: {c}" for t, c in cases if c["verdict"] != "agree"]
    lines.append("  under DDP:")
    lines += bench_ddp.summarize(ran).splitlines()[1:]
    lines.append("  sharded by FSDP2:")
    lines += bench_fsdp.summarize(ran, LAYOUTS).splitlines()[1:]
    return "\n".join(lines)


def main() -> None:
    bench_ddp.command(
        __doc__ or "", survey, _line, summarize, __file__, after=_after, listed=listed
    )


if __name__ == "__main__":
    main()
