"""Any model on meta: transformers' own architectures, traced on the meta device, checked.

For every model type of transformers' auto mappings (causal LM, masked LM,
seq2seq LM, sequence classification, image classification, image-text-to-text
given text alone, CTC, audio classification, speech seq2seq), at its default
config with the layers cut to 2, and ``input_ids`` [1, 16] (or
``pixel_values`` [1, C, H, W]; audio: ``input_values`` [1, 16000] or
``input_features`` [1, mel bins, frames], and for speech ``decoder_input_ids``
[1, 8]):

1. **before**: a plain forward of the model on meta with meta inputs (what
   execorder did before it ran meta models on real inputs);
2. **execorder**: ``execorder.profile(..., device="meta", backward=True)``,
   which never rebuilds on CPU: it traces on meta, or fails and says why;
3. **check**: the same at a small size (hidden sizes shrunk where the config
   allows), against the truth: a plain forward and backward on CPU, whose
   ``.grad is None`` parameters are the ones that get no gradient. The meta
   report must name exactly those, or differ only on parameters it marks as
   resting on an assumption. Where both run, execorder's meta and CPU reports
   are compared too (same calls, same parameters);
4. **walk**: ``execorder.profile(..., device="cpu")`` without a backward (the
   graph walk a trace without ``--backward`` gives) against the same truth.

A model whose default config is broken (it fails on CPU too, or needs inputs
other than these) is counted as such, not as a failure of the meta run.

    make bench                      # runs it with the others
    python benchmarks/bench_meta.py [--only TYPE,TYPE] [--tasks TASK,TASK] [--jobs N] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import resource
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

TASKS = {
    "causal": "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "masked": "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
    "seq2seq": "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
    "seqcls": "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    "image": "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES",
    "vlm": "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES",  # on text alone: the vision tower idle
    "ctc": "MODEL_FOR_CTC_MAPPING_NAMES",
    "audio": "MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES",
    "speech": "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES",
}
AUDIO = ("ctc", "audio", "speech")
LAYER_KEYS = (
    "num_hidden_layers", "num_layers", "n_layer", "n_layers", "encoder_layers",
    "decoder_layers", "num_encoder_layers", "num_decoder_layers",
)  # fmt: skip
SMALL = {
    "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 32, "d_model": 64, "d_ff": 128, "d_kv": 16,
    "num_heads": 4, "n_embd": 64, "n_head": 4, "n_inner": 128, "encoder_ffn_dim": 128,
    "decoder_ffn_dim": 128, "encoder_attention_heads": 4, "decoder_attention_heads": 4,
    "embedding_size": 64,
}  # fmt: skip
FEWER_EXPERTS = {
    "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "moe_num_experts": 4,
    "num_experts_per_tok": 2, "n_group": 1, "topk_group": 1,
}  # fmt: skip
MEMORY_CAP = 10 * 2**30  # per worker: a model too big for the check fails cleanly
CPU_CHECK_BYTES = 3e8  # the default config is checked on CPU directly up to this size
SMALL_CHECK_BYTES = 1.5e9  # a config made small is checked up to this size
TIMEOUT_S = 400


def cut(config: Any, layers: int = 2) -> Any:
    """The config with its layer counts cut to ``layers`` (sub-configs too)."""
    for key in LAYER_KEYS:
        value = _attribute(config, key)
        if isinstance(value, int) and not isinstance(value, bool) and value > layers:
            with contextlib.suppress(Exception):  # a validated config may refuse: keep it
                setattr(config, key, layers)
    for sub in ("text_config", "vision_config", "encoder", "decoder"):
        child = getattr(config, sub, None)
        if child is not None and hasattr(child, "to_dict"):
            cut(child, layers)
    return config


def _attribute(config: Any, key: str) -> Any:
    """``getattr(config, key, None)``, for configs whose getters raise other errors too."""
    try:
        return getattr(config, key, None)
    except Exception:
        return None


def shrunk(config: Any, sizes: dict[str, int] = SMALL) -> Any:
    """The config with its widths (or its experts) made small, where it has them."""
    for key, value in sizes.items():
        if isinstance(_attribute(config, key), int):
            with contextlib.suppress(Exception):
                setattr(config, key, value)
    for sub in ("text_config", "vision_config"):
        child = getattr(config, sub, None)
        if child is not None and hasattr(child, "to_dict"):
            shrunk(child, sizes)
    return config


def inputs(task: str, config: Any, seed: int = 0) -> dict[str, Any]:
    """Forward's inputs, real, on CPU: ids in range (ending with EOS when there is one)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    if task in AUDIO:
        return _audio_inputs(task, config, generator)
    if task == "image":
        size = getattr(config, "image_size", 224)
        size = size[0] if isinstance(size, (list, tuple)) else size
        size = size.get("height", 224) if isinstance(size, dict) else size
        channels = getattr(config, "num_channels", 3)
        return {"pixel_values": torch.randn(1, channels, size, size, generator=generator)}
    text = getattr(config, "text_config", None) or config
    vocab = min(int(getattr(text, "vocab_size", None) or 1000), 1000)
    ids = torch.randint(3, vocab, (1, 16), generator=generator)
    eos = getattr(text, "eos_token_id", None)
    eos = eos[0] if isinstance(eos, (list, tuple)) and eos else eos
    if isinstance(eos, int) and 0 <= eos < int(getattr(text, "vocab_size", 0) or 0):
        ids[:, -1] = eos  # a sequence classifier reads the last EOS
    found = {"input_ids": ids}
    if task == "seq2seq":
        found["decoder_input_ids"] = ids.clone()
    return found


def _audio_inputs(task: str, config: Any, generator: Any) -> dict[str, Any]:
    """A second of 16 kHz audio, or its mel features, as the model's class takes it."""
    import torch
    import transformers
    from transformers.models.auto import modeling_auto

    name = getattr(modeling_auto, TASKS[task])[config.model_type]
    name = name[0] if isinstance(name, (list, tuple)) else name
    main = getattr(getattr(transformers, name), "main_input_name", "input_values")
    if main == "input_features":
        mels = getattr(config, "num_mel_bins", None) or getattr(config, "feature_size", 80)
        frames = 2 * getattr(config, "max_source_positions", 100)
        found = {main: torch.randn(1, mels, frames, generator=generator)}
    else:
        found = {main: torch.randn(1, 16000, generator=generator)}
    if task == "speech":
        text = getattr(config, "text_config", None) or config
        vocab = min(int(getattr(text, "vocab_size", None) or 1000), 1000)
        found["decoder_input_ids"] = torch.randint(3, vocab, (1, 8), generator=generator)
    return found


def _tensors(value: Any) -> list[Any]:
    from execorder.backends.common import tensors

    return list(tensors(value))


def _build(
    task: str, model_type: str, class_name: str, small: bool | str, whole: bool = False
) -> tuple[Any, Any]:
    """The model class and its config: default, layers cut to 2 (unless ``whole``).

    ``small`` makes its widths small (True), or only its number of experts
    (``"experts"``: for configs whose widths depend on each other).
    """
    import transformers
    from transformers import CONFIG_MAPPING

    config = CONFIG_MAPPING[model_type]()
    if not whole:
        config = cut(config)
    if small == "experts":
        config = shrunk(config, FEWER_EXPERTS)
    elif small:
        config = shrunk(config)
    return getattr(transformers, class_name), config


def _reason(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
    return text[:240]


def _truth(cls: Any, config: Any, task: str, seed: int = 0) -> set[str]:
    """The trainable parameters a real CPU forward and backward give no gradient."""
    import torch

    torch.manual_seed(seed)
    model = cls(config)
    output = model(**inputs(task, config))
    losses = [t.float().sum() for t in _tensors(output) if t.requires_grad]
    torch.stack(losses).sum().backward()
    seen: dict[int, str] = {}
    for name, param in model.named_parameters():
        seen.setdefault(id(param), name)
    by_id = {id(p): p for p in model.parameters()}
    return {seen[k] for k, p in by_id.items() if p.requires_grad and p.grad is None}


def _random_structure(cls: Any, config: Any, task: str, truth: set[str]) -> bool:
    """Whether real backwards with other seeds give other parameters no gradient."""
    import torch

    for seed in range(1, 6):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            if _truth(cls, config, task, seed=seed) != truth:
                return True
    return False


def _profile(
    cls: Any, config: Any, task: str, device: str | None, backward: bool = True, **options: Any
) -> Any:
    import execorder

    return execorder.profile(
        lambda: cls(config),
        inputs=inputs(task, config),
        backward=backward,
        device=device,
        **options,
    )


def _walk_check(cls: Any, config: Any, task: str, truth: set[str], check: str) -> str:
    """4. the graph walk (a trace without a backward, on CPU) against the same truth."""
    try:
        report = _profile(cls, config, task, "cpu", backward=False).report
    except Exception as exc:
        return f"failed: {_reason(exc)}"
    said = {p.name for p in report.no_grad()}
    if said == truth:
        return "exact"
    if (said ^ truth) <= {p.name for p in report.on_assumption}:
        return "on assumption"
    if check == "random" or _random_structure(cls, config, task, truth):
        return "random"  # real runs differ from each other (a router's jitter, LayerDrop)
    return f"WRONG: says {sorted(said - truth)[:3]}, CPU says {sorted(truth - said)[:3]}"


def survey(job: tuple[str, str, str]) -> dict[str, Any]:
    """Every measurement of one model type; never raises."""
    task, model_type, class_name = job
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, resource.RLIM_INFINITY))
    import torch
    import transformers

    from execorder.loading.memory import model_bytes

    transformers.logging.set_verbosity_error()
    found: dict[str, Any] = {"task": task, "type": model_type, "class": class_name}
    try:
        cls, config = _build(task, model_type, class_name, small=False)
        with torch.device("meta"):
            model = cls(config)
        found["bytes"] = model_bytes(model)
    except Exception as exc:
        found["broken"] = f"builds on no device: {_reason(exc)}"
        return found
    del model
    found.update(_on_meta(cls, config, task))
    if found["meta"] == "failed":
        # Cutting the layers can break a config (a hybrid whose first two layers
        # hold no attention): then the whole default config, which meta holds too.
        cls, config = _build(task, model_type, class_name, small=False, whole=True)
        whole = _on_meta(cls, config, task)
        if whole["meta"] != "failed":
            found.pop("meta_why", None)
            found.update(whole, whole_config=True)
    # 3. the check, against a real backward on CPU, at a size CPU can run.
    found.update(_check(task, model_type, class_name, found["bytes"], found.get("whole_config")))
    if found["meta"] == "failed" and found["check"] in ("broken", "unchecked"):
        # It fails on CPU as well: the default config itself is broken.
        found["broken"] = f"fails on CPU too: {found.get('check_why', '')}"
    return found


def _on_meta(cls: Any, config: Any, task: str) -> dict[str, Any]:
    """1. before: a plain forward on meta, inputs on meta; 2. execorder on meta, never on CPU."""
    import torch

    from execorder.errors import MetaDeviceError
    from execorder.report import AssumptionKind

    found: dict[str, Any] = {}
    try:
        with torch.device("meta"):
            model = cls(config)
        model(**{k: v.to("meta") for k, v in inputs(task, config).items()})
        found["before"] = "ok"
    except Exception as exc:
        found["before"] = _reason(exc)
    start = time.perf_counter()
    try:
        result = _profile(cls, config, task, "meta")
        found["meta"] = "ok"
        found["assumptions"] = sum(a.count for a in result.report.assumptions)
        routed = result.report.assumed(AssumptionKind.SELECTION)  # not draws: said below
        found["routing"] = sum(a.count for a in routed)
    except MetaDeviceError as exc:
        found["meta"] = "needs values"
        found["meta_why"] = exc.reason[:240]
    except Exception as exc:
        found["meta"] = "failed"
        found["meta_why"] = _reason(exc)
    found["meta_s"] = round(time.perf_counter() - start, 2)
    return found


def _check(
    task: str, model_type: str, class_name: str, size: int, whole: bool | None = None
) -> dict[str, Any]:
    import torch

    from execorder.errors import MetaDeviceError
    from execorder.loading.memory import model_bytes
    from execorder.report import AssumptionKind

    # A model too big to check on CPU at its default size is only checked small.
    sizes = ["small", "experts"] if size > CPU_CHECK_BYTES else ["default", "small"]
    why = ""
    for which in sizes:
        try:
            small = {"default": False, "small": True, "experts": "experts"}[which]
            cls, config = _build(task, model_type, class_name, small=small, whole=bool(whole))
            with torch.device("meta"):
                measured = model_bytes(cls(config))
            if measured > (CPU_CHECK_BYTES if which == "default" else SMALL_CHECK_BYTES):
                why = f"{measured / 1e9:.1f} GB even when made small"
                continue
            truth = _truth(cls, config, task)
        except Exception as exc:
            why = _reason(exc)
            continue
        checked: dict[str, Any] = {"checked_at": which}
        try:
            report = _profile(cls, config, task, "meta").report
        except MetaDeviceError as exc:
            checked["check"] = "needs values"
            checked["check_why"] = exc.reason[:240]
            return checked
        except Exception as exc:
            checked["check"] = "meta failed"
            checked["check_why"] = _reason(exc)
            return checked
        said = {p.name for p in report.no_grad()}
        resting = {p.name for p in report.on_assumption}
        # Whether real runs differ from each other (LayerDrop), and whether the report says
        # its run chose from a random draw.
        checked["random"] = _random_structure(cls, config, task, truth)
        checked["drawn"] = bool(report.assumed(AssumptionKind.DRAWN))
        if said == truth:
            checked["check"] = "exact"
        elif (said ^ truth) <= resting:
            checked["check"] = "on assumption"
        elif checked["random"]:
            # Which layers run is drawn at random (LayerDrop): no one run is the truth.
            checked["check"] = "random"
        else:
            checked["check"] = "WRONG"
            checked["check_why"] = (
                f"meta says no gradient for {sorted(said - truth)[:5]}, "
                f"CPU for {sorted(truth - said)[:5]}"
            )
        checked["walk"] = _walk_check(cls, config, task, truth, checked["check"])
        if not report.assumptions:
            try:
                on_cpu = _profile(cls, config, task, "cpu").report
                same = (
                    on_cpu.to_dict()["modules"] == report.to_dict()["modules"]
                    and on_cpu.to_dict()["params"] == report.to_dict()["params"]
                )
                checked["same_as_cpu"] = same
            except Exception as exc:
                checked["same_as_cpu"] = _reason(exc)
        return checked
    if size > CPU_CHECK_BYTES:
        return {"check": "unchecked", "check_why": f"too big to check on CPU, and small: {why}"}
    return {"check": "broken", "check_why": f"fails on CPU too: {why}"}


def jobs(
    only: set[str] | None, tasks: tuple[str, ...] = tuple(TASKS)
) -> list[tuple[str, str, str]]:
    """(task, model type, class name) of every model of ``tasks``' auto mappings, or of
    those in ``only``."""
    from transformers.models.auto import modeling_auto

    found = []
    for task in tasks:
        for model_type, class_name in getattr(modeling_auto, TASKS[task]).items():
            if only and model_type not in only:
                continue
            name = class_name[0] if isinstance(class_name, (list, tuple)) else class_name
            found.append((task, model_type, name))
    return found


def _line(found: dict[str, Any]) -> str:
    return (
        f"  {found['task']:8} {found['type']:28} before={str(found.get('before', '-'))[:20]:20} "
        f"meta={found.get('meta', '-'):13} check={found.get('check', '-')}"
    )


def _failed(why: str) -> dict[str, Any]:
    return {"meta": "failed", "meta_why": why}


def run(
    todo: list[tuple[str, str, str]],
    workers: int,
    *,
    work: Callable[[tuple[str, str, str]], dict[str, Any]] = survey,
    failed: Callable[[str], dict[str, Any]] = _failed,
    line: Callable[[dict[str, Any]], str] = _line,
) -> list[dict[str, Any]]:
    """``work`` on each job in a worker process, with a time limit each.

    ``failed`` makes the result of a job that timed out or whose worker
    died, from why; ``line`` its progress line.
    """
    results: list[dict[str, Any]] = []
    context = multiprocessing.get_context("spawn")
    pending = list(todo)
    while pending:
        with context.Pool(workers, maxtasksperchild=8) as pool:
            submitted = [(job, pool.apply_async(work, (job,))) for job in pending]
            pending = []
            for index, (job, future) in enumerate(submitted):
                named = {"task": job[0], "type": job[1], "class": job[2]}
                try:
                    results.append(future.get(timeout=TIMEOUT_S))
                except multiprocessing.TimeoutError:
                    results.append({**named, **failed("timed out")})
                    pending = [j for j, _ in submitted[index + 1 :]]
                    pool.terminate()
                    break
                except Exception as exc:  # a worker that died
                    results.append({**named, **failed(_reason(exc))})
                print(line(results[-1]), file=sys.stderr, flush=True)
    return results


def summarize(results: list[dict[str, Any]]) -> str:
    """The counts, by outcome, and the failures by cause."""
    usable = [r for r in results if "broken" not in r and r.get("check") != "broken"]
    broken = len(results) - len(usable)
    before = sum(r.get("before") == "ok" for r in usable)
    meta = Counter(r.get("meta") for r in usable)
    assumed = sum(1 for r in usable if r.get("meta") == "ok" and r.get("routing"))
    checks = Counter(r.get("check") for r in usable)
    same = Counter(r.get("same_as_cpu") for r in usable if "same_as_cpu" in r)
    walks = Counter(str(r["walk"]).split(":")[0] for r in usable if "walk" in r)
    whole = sum(1 for r in usable if r.get("whole_config"))
    random = [r for r in usable if r.get("random")]
    said = [r for r in random if r.get("drawn")]
    drawn_only = sum(1 for r in usable if r.get("drawn") and not r.get("random"))
    lines = [
        f"transformers model types x tasks: {len(results)}; "
        f"{broken} whose default config fails on CPU too (not counted)",
        f"of the other {len(usable)}:",
        f"  a plain forward on meta (before): {before} run",
        f"  execorder on meta, no CPU rebuild: {meta['ok']} run "
        f"({assumed} of them on a stated routing assumption), "
        f"{meta['needs values']} need values computed from parameters, "
        f"{meta['failed']} fail otherwise ({whole} run with all their layers: cut to 2, "
        "their config breaks)",
        f"  checked against a real CPU backward: {checks['exact']} exact, "
        f"{checks['on assumption']} differ only where marked, {checks['WRONG']} wrong, "
        f"{checks['needs values']} need values, {checks['meta failed']} fail on meta, "
        f"{checks['random']} with a random structure (real runs differ from each other), "
        f"{checks['unchecked']} not checked (too big for CPU, and no small config)",
        f"  execorder's meta report equals its CPU report: {same[True]} of {sum(same.values())}",
        f"  a random structure (real backwards with 5 other seeds differ): {len(random)}; "
        f"the report lists its choices as drawn at random for {len(said)} of them "
        f"(and for {drawn_only} whose 5 other runs did not differ)",
        f"  the graph walk on CPU (no backward run) against the same backward: "
        f"{walks['exact']} exact, {walks['on assumption']} differ only where marked, "
        f"{walks['WRONG']} wrong, {walks['random']} random, {walks['failed']} fail",
    ]
    for label, key, why in (
        ("needs values", "meta", "meta_why"),
        ("failed", "meta", "meta_why"),
        ("WRONG", "check", "check_why"),
    ):
        hit = [r for r in usable if r.get(key) == label]
        for r in hit:
            lines.append(f"    {label}: {r['task']} {r['type']}: {r.get(why, '')[:150]}")
    for r in random:
        if not r.get("drawn"):
            lines.append(f"    random, not said: {r['task']} {r['type']}")
    for r in usable:
        if str(r.get("walk", "")).startswith(("WRONG", "failed")):
            lines.append(f"    walk: {r['task']} {r['type']}: {r['walk'][:150]}")
    return "\n".join(lines)


def options(doc: str) -> argparse.ArgumentParser:
    """A survey's command line: ``--only``, ``--jobs``, ``--json``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--only", help="comma-separated model types")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--json", type=Path, help="also write every result here")
    return parser


def finish(
    args: argparse.Namespace, results: list[dict[str, Any]], summary: str, start: float
) -> None:
    """Write the results (``--json``), print the summary and the time taken."""
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    print(summary)
    print(f"  ({time.perf_counter() - start:.0f} s, {args.jobs} workers)")


def main() -> None:
    parser = options(__doc__)
    parser.add_argument("--tasks", help=f"comma-separated, of: {', '.join(TASKS)}")
    args = parser.parse_args()
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise SystemExit("bench_meta needs transformers (pip install execorder[hf])") from None
    tasks = tuple(args.tasks.split(",")) if args.tasks else tuple(TASKS)
    todo = jobs(set(args.only.split(",")) if args.only else None, tasks)
    start = time.perf_counter()
    results = run(todo, args.jobs)
    finish(args, results, summarize(results), start)


if __name__ == "__main__":
    main()
