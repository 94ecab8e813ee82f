"""execorder's FSDP2 plans and the watch against real FSDP2, on every transformers causal LM.

For every model type of transformers' causal-LM auto mapping, built as
``bench_ddp.py`` builds it (2 layers, small widths; fewer experts where small
widths break the config; at most 200 MB), two gloo ranks on this machine,
each on a batch of its own (as ranks of a job train), do this:

- **plan**: ``execorder.fsdp.plan`` of the model, on meta, for 2 ranks, in
  each layout: ``blocks`` (the default) and ``torchtitan`` (where the model is
  a decoder);
- **truth**: the plain model's step, ``model(input_ids,
  labels=input_ids).loss.backward()``, recorded, on each rank; its gradients
  averaged over the ranks (what data parallelism must give every rank);
- **sharded**: the model sharded by the plan (``execorder.fsdp.shard``: real
  ``fully_shard`` on each unit, then the root), the same step, unwatched and
  with ``execorder.training.StepWatch`` recording it; FSDP2's gradients
  gathered whole (``full_tensor()``);
- **memory**: one rank's peak over two training steps (AdamW, foreach),
  ``execorder.fsdp.plan_memory`` on meta against PyTorch's ``FSDPMemTracker``
  on the real ranks, with the reduce-scatter made in place as NCCL makes it
  (gloo's copies its input). Not for a plan with a group (the torchtitan
  layout's ``[norm, head]``): ``FSDPMemTracker`` does not support
  ``fully_shard`` on a list of modules (torchtitan#1094); under it FSDP2
  gathers the group again in backward, which the job alone does not.

Verdicts, one a model and layout:

- ``agree``: FSDP2 ran the plan, its gradients are the truth's (``allclose``,
  rtol 1e-3), the watch let the step pass and left the gradients as they were,
  and the watched step's report is the plain model's, field by field;
- ``refused, as the plan says``: FSDP2 refused the plan, and the plan has an
  error check;
- ``caught``: FSDP2 gave wrong gradients and the watch stopped the step;
- ``MISSED``: FSDP2 gave wrong gradients and the watch let the step pass;
- ``FALSE ALARM``: the gradients are right and the watch stopped the step;
- ``PLAN REFUSED``: FSDP2 refused a plan with no error check;
- ``REPORT DIFFERS``: the watched step's report is not the plain model's;
- ``CHANGED``: watched, FSDP2's gradients differ from unwatched.

    python benchmarks/bench_fsdp.py [--only TYPE,TYPE] [--json FILE]
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# the tests' real training step (models) and accelerate's preparation (accelerate_probe)
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

import models  # noqa: E402
from bench_ddp import Subject, _model, command  # noqa: E402
from bench_meta import _reason  # noqa: E402

RTOL, ATOL = 1e-3, 1e-6  # float32 sums in another order: FSDP2 reduce-scatters the ranks'
TOLERANCE = 0.10  # the real step's own peak varies a little between runs (tests/test_memory.py)


def _batch(subject: Subject, rank: int | None = None) -> dict[str, Any]:
    """A rank's batch (this rank's by default): its own, as each rank of a job reads its own
    data."""
    import torch.distributed as dist

    return subject.batch((dist.get_rank() if rank is None else rank) + 1)


def _truth(subject: Subject) -> tuple[dict[str, Any], dict[str, Any]]:
    """The plain model's recorded step on this rank, and its gradients averaged over the ranks
    (None for a parameter no rank gave one)."""
    import torch
    import torch.distributed as dist

    import execorder

    torch.manual_seed(0)
    model = subject.build()
    model.train()
    torch.manual_seed(1)
    with execorder.record(model) as recording:
        subject.loss(model(**_batch(subject))).backward()
    report = recording.report().to_dict()
    grads: dict[str, Any] = {}
    for name, param in model.named_parameters():
        given = torch.tensor([float(param.grad is not None)])
        dist.all_reduce(given)
        grad = torch.zeros_like(param) if param.grad is None else param.grad.detach().clone()
        dist.all_reduce(grad)
        grads[name] = grad / dist.get_world_size() if given.item() else None
    return report, grads


def _sharded(subject: Subject, plan: Any, watched: bool) -> dict[str, Any]:
    """The step sharded by the plan, watched or not: FSDP2's gradients, whole (``"some"`` for
    a parameter some ranks have one of and others not), the watched report; or how it ended."""
    import torch
    import torch.distributed as dist

    import execorder.fsdp
    from execorder.errors import ExecOrderError
    from execorder.training import StepWatch

    torch.manual_seed(0)
    model = subject.build()
    model.train()
    watch = StepWatch(steps=(1,)) if watched else None
    try:
        execorder.fsdp.shard(model, plan)
        torch.manual_seed(1)
        if watch is not None:
            watch.begin(model, 1)
        subject.loss(model(**_batch(subject))).backward()
        if watch is not None:
            watch.end()
    except ExecOrderError as exc:
        return {"stopped": f"{type(exc).__name__}: {exc}"[:300]}
    except Exception as exc:
        if watch is not None:
            watch.abort()
        return {"failed": _reason(exc)[:300]}
    has = torch.tensor([float(p.grad is not None) for p in model.parameters()])
    every, some = has.clone(), has.clone()
    dist.all_reduce(every, op=dist.ReduceOp.MIN)
    dist.all_reduce(some, op=dist.ReduceOp.MAX)
    grads: dict[str, Any] = {}
    for (name, param), all_, any_ in zip(model.named_parameters(), every, some, strict=True):
        grads[name] = param.grad.full_tensor() if all_ else "some" if any_ else None
    ended: dict[str, Any] = {"grads": grads}
    if watch is not None:
        ended["report"] = watch.reports[1].to_dict()
    return ended


def _tracked(subject: Subject, plan: Any) -> int:
    """This rank's peak over two training steps sharded by the plan (forward, backward of the
    summed outputs, AdamW's foreach step), measured by PyTorch's ``FSDPMemTracker``: the steps
    ``execorder.fsdp.plan_memory`` measures on meta."""
    import torch
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker

    import execorder.fsdp

    torch.manual_seed(0)
    model = subject.build()
    model.train()
    execorder.fsdp.shard(model, plan)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], foreach=True)
    batch = _batch(subject)
    tracker = FSDPMemTracker(model, optimizer)
    tracker.track_inputs(tuple(batch.values()))
    torch.manual_seed(1)
    with tracker, _reduced_in_place():
        models.train_two_steps(model, (), optimizer, tracker.reset_mod_stats, kwargs=batch)
    return int(tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"])


@contextmanager
def _reduced_in_place() -> Iterator[None]:
    """FSDP2's reduce-scatter as NCCL makes it, with no temporary in torch's allocator.

    gloo's reduce-scatter copies its input, a temporary as large as the unit's gradients
    (FSDPMemTracker counts it at the root's reduce: 16 MB of a 76 MB peak for a Llama with a
    32,000-token vocabulary), which NCCL does not make. Here the ranks all-reduce the input in
    place and each keeps its chunk: the same values, and the bytes a GPU job holds.
    """
    import torch.distributed as dist

    def reduce_scatter(
        output: Any,
        input: Any,
        op: Any = dist.ReduceOp.SUM,
        group: Any = None,
        async_op: bool = False,
    ) -> None:
        dist.all_reduce(input, op=op, group=group)
        chunks = input.view(dist.get_world_size(group), -1)
        output.copy_(chunks[dist.get_rank(group)].view_as(output))

    gloo = dist.reduce_scatter_single
    dist.reduce_scatter_single = reduce_scatter
    try:
        yield
    finally:
        dist.reduce_scatter_single = gloo


def planned_peak(subject: Subject, layout: str) -> tuple[int, bool]:
    """execorder's peak of rank 0 under the model's plan over 2 ranks in ``layout``, on meta,
    and whether it rests on an assumption; outside any process group (``plan_memory`` runs
    FSDP2 over a fake one)."""
    import execorder.fsdp
    from execorder.profiling import Profiler

    profiler = Profiler(subject.build, inputs=_batch(subject, rank=0))
    plan, report = execorder.fsdp.plan_and_report(profiler, world_size=2, layout=layout)
    memory = execorder.fsdp.plan_memory(profiler, plan, report, alternatives=False).memory
    assert memory is not None
    return memory.peak_bytes, memory.assumed


def _wrong(grads: dict[str, Any], truth: dict[str, Any]) -> list[str]:
    """The parameters whose gradient is not the truth's."""
    import torch

    return [
        name
        for name, right in truth.items()
        if isinstance(grads.get(name), str)
        or (grads.get(name) is None) != (right is None)
        or (right is not None and not torch.allclose(grads[name], right, rtol=RTOL, atol=ATOL))
    ]


def first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """Where two JSON values first differ, as a path; None when equal."""
    if type(a) is not type(b):
        return f"{path}: {str(a)[:60]} != {str(b)[:60]}"
    if isinstance(a, dict):
        keys = list(dict.fromkeys([*a, *b]))
        return next(
            (d for k in keys if (d := first_difference(a.get(k), b.get(k), f"{path}.{k}"))), None
        )
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} items != {len(b)}"
        pairs = enumerate(zip(a, b, strict=True))
        return next(
            (d for i, (x, y) in pairs if (d := first_difference(x, y, f"{path}[{i}]"))), None
        )
    return None if a == b else f"{path}: {str(a)[:60]} != {str(b)[:60]}"


def verdict(found: dict[str, Any]) -> str:
    """What the plan and the watch say of the real step."""
    unwatched, watched = found["unwatched"], found["watched"]
    if "failed" in unwatched:
        return "refused, as the plan says" if found["plan_errors"] else "PLAN REFUSED"
    if found["wrong"]:
        return "caught" if "stopped" in watched else "MISSED"
    if "stopped" in watched or "failed" in watched:
        return "FALSE ALARM" if "stopped" in watched else "CHANGED"
    if found["watched_wrong"] != found["wrong"]:
        return "CHANGED"
    return "REPORT DIFFERS" if found["report_differs"] else "agree"


LAYOUTS = ("blocks", "torchtitan")
"""The layouts each model is planned with (torchtitan's where the model is a decoder)."""


def _case(subject: Subject, layout: str, report: Any, truth: Any) -> dict[str, Any]:
    """The model planned with one layout, sharded by the plan, against the truth."""
    import torch.distributed as dist

    import execorder.fsdp
    from execorder.errors import LayoutError
    from execorder.report import Severity

    try:
        plan = execorder.fsdp.plan(
            subject.build,
            inputs=_batch(subject),
            world_size=dist.get_world_size(),
            layout=layout,
        )
    except LayoutError as exc:
        return {"skipped": str(exc)}
    unwatched = _sharded(subject, plan, watched=False)
    watched = _sharded(subject, plan, watched=True)
    found: dict[str, Any] = {}
    peak = None
    if any(unit.grouped for unit in plan.units):
        # FSDPMemTracker does not support fully_shard on a list of modules (torchtitan#1094):
        # under it FSDP2 reshards a group after its first module's backward and gathers it
        # again, which the job alone does not do: its peak is not the job's.
        found["tracker_why"] = "FSDPMemTracker does not support groups"
    elif "grads" in unwatched:
        try:
            peak = _tracked(subject, plan)
        except Exception as exc:  # FSDPMemTracker's own (a unit that never ran has no
            found["tracker_why"] = _reason(exc)  # unsharded parameter for it to read)
    found |= {
        "units": len(plan.units),
        "left_out": list(plan.unit_rule.left_out),
        "plan_errors": [c.kind.value for c in plan.checks if c.severity is Severity.ERROR],
        "unwatched": {k: v for k, v in unwatched.items() if k != "grads"},
        "watched": {k: v for k, v in watched.items() if k not in ("grads", "report")},
        "wrong": _wrong(unwatched["grads"], truth) if "grads" in unwatched else [],
        "watched_wrong": _wrong(watched["grads"], truth) if "grads" in watched else [],
        "report_differs": first_difference(report, watched["report"])
        if "report" in watched
        else None,
        "real_peak": peak,
    }
    found["verdict"] = verdict(found)
    return found


def survey(model_type: str, class_name: str) -> dict[str, Any]:
    """One model type on this rank, in each layout; never raises."""
    found: dict[str, Any] = {"type": model_type, "class": class_name}
    subject, why = _model(model_type, class_name)
    if subject is None:
        return {**found, "broken": why}
    return {**found, **layouts(subject, LAYOUTS)}


def layouts(subject: Subject, names: tuple[str, ...]) -> dict[str, Any]:
    """The subject planned in each layout and sharded by the plan (``layouts``), or why it
    broke (``broken``)."""
    try:
        report, truth = _truth(subject)
        return {"layouts": {name: _case(subject, name, report, truth) for name in names}}
    except Exception as exc:
        return {"broken": _reason(exc)}


def memory_verdict(found: dict[str, Any]) -> str:
    """execorder's peak against FSDPMemTracker's."""
    planned, real = found.get("planned_peak"), found.get("real_peak")
    if "tracker_why" in found:
        return "not compared: " + found["tracker_why"].split(":")[0]
    if planned is None or not real:
        return "not measured"
    ratio = planned / real
    if planned == real:
        return "to the byte"
    if abs(ratio - 1) <= 0.01:
        return "within 1%"
    if abs(ratio - 1) <= TOLERANCE:
        return "within 10%"
    if ratio > 1 and found["assumed"]:
        return "above, assumed"
    return "UNDER" if ratio < 1 else "OVER"


def measure_plans(
    results: list[dict[str, Any]], subject_of: Callable[[str, str], Subject | None] | None = None
) -> None:
    """execorder's peak for each model and layout sharded, beside the measured one (in this
    process: it is in no process group); ``subject_of`` a model's type and class (a causal
    LM's by default)."""
    import logging
    import warnings

    import transformers

    warnings.filterwarnings("ignore")
    logging.getLogger("execorder").setLevel(logging.ERROR)
    transformers.logging.set_verbosity_error()
    for model in results:
        for layout, found in model.get("layouts", {}).items():
            if found.get("real_peak") is not None:
                try:
                    subject = (subject_of or _causal_lm)(model["type"], model["class"])
                    if subject is None:
                        raise RuntimeError("it no longer builds")
                    found["planned_peak"], found["assumed"] = planned_peak(subject, layout)
                except Exception as exc:
                    found["planned_why"] = _reason(exc)
            if "skipped" not in found and "unwatched" in found:
                found["memory"] = memory_verdict(found)
        shown = {layout: f.get("memory") for layout, f in model.get("layouts", {}).items()}
        print(f"  {model['type']:28} memory {shown}", file=sys.stderr)


def compare_accelerate(results: list[dict[str, Any]]) -> None:
    """Each model's ``--layout accelerate`` plan beside accelerate's own ``fsdp2_prepare_model``
    (tests/accelerate_probe.py), both sharding the model over a fake process group in this
    process: the same units, bytes and flags, or accelerate refuses and the plan says so."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    import execorder.fsdp
    from execorder.report import Severity

    try:
        import accelerate_probe as probe
    except ImportError:  # no accelerate: nothing to compare
        return
    for model in results:
        if "broken" in model:
            continue
        subject = _causal_lm(model["type"], model["class"])
        assert subject is not None
        plan = execorder.fsdp.plan(
            subject.build,
            inputs=_batch(subject, rank=0),
            world_size=2,
            layout="accelerate",
        )
        errors = [c.kind.value for c in plan.checks if c.severity is Severity.ERROR]
        dist.init_process_group("fake", rank=0, world_size=2, store=FakeStore())
        try:
            theirs = subject.build()
            probe.accelerated(theirs)
            prepared = probe.units(theirs)
        except Exception as exc:
            verdict = "refused by accelerate, as the plan says" if errors else "PLAN SAID NOTHING"
            model["accelerate_why"] = _reason(exc)
        else:
            ours = subject.build()
            execorder.fsdp.shard(ours, plan)
            verdict = "same" if probe.units(ours) == prepared else "DIFFERENT"
        finally:
            dist.destroy_process_group()
        model["accelerate"] = verdict
        print(f"  {model['type']:28} accelerate: {verdict}", file=sys.stderr)


def _causal_lm(model_type: str, class_name: str) -> Subject | None:
    return _model(model_type, class_name)[0]


def _after(results: list[dict[str, Any]]) -> None:
    measure_plans(results)
    compare_accelerate(results)


def _line(found: dict[str, Any]) -> str:
    if "broken" in found:
        return f"  {found['type']:28} not run: {found['broken'][:90]}"
    each = []
    for layout, case in found["layouts"].items():
        if "skipped" in case:
            each.append(f"{layout}: not a decoder")
            continue
        left = f" (left out: {', '.join(case['left_out'])})" if case["left_out"] else ""
        each.append(f"{layout}: {case['units']} units, {case['verdict']}{left}")
    return f"  {found['type']:28} " + "; ".join(each)


def summarize(results: list[dict[str, Any]], layouts: tuple[str, ...] = LAYOUTS) -> str:
    """Verdicts by layout, and every case that is not an agreement."""
    ran = [r for r in results if "broken" not in r]
    lines = [
        f"  model types: {len(results)}; sharded by their plans on 2 ranks: {len(ran)} "
        "(the others fail on CPU, or are too big: not counted)",
    ]
    for layout in layouts:
        cases = [(r["type"], r["layouts"][layout]) for r in ran]
        planned = [(t, c) for t, c in cases if "skipped" not in c]
        counts = Counter(c["verdict"] for _, c in planned)
        memory = Counter(c.get("memory", "not measured") for _, c in planned)
        left = [t for t, c in planned if c["left_out"]]
        lines += [
            f"  {layout}: {len(planned)} planned"
            + (f" ({len(cases) - len(planned)} not decoders)" if len(cases) > len(planned) else "")
            + ": "
            + ", ".join(f"{n} {v}" for v, n in counts.most_common()),
            "    memory, execorder against FSDPMemTracker: "
            + ", ".join(f"{n} {v}" for v, n in memory.most_common()),
        ]
        if left:
            lines.append(
                "    blocks left to the unit around them (shared, read from outside, or "
                f"writing into their arguments): {len(left)} ({', '.join(left)})"
            )
        for model_type, case in planned:
            if "tracker_why" in case and "groups" not in case["tracker_why"]:
                lines.append(f"    {model_type}: FSDPMemTracker failed: {case['tracker_why'][:90]}")
            elif case.get("real_peak") and case.get("memory") not in ("to the byte", "within 1%"):
                ratio = case.get("planned_peak", 0) / case["real_peak"]
                lines.append(
                    f"    {model_type}: memory {case.get('memory')} ({ratio:.3f}x: "
                    f"{case.get('planned_peak')} B planned, {case['real_peak']} B measured)"
                    + (f": {case['planned_why'][:120]}" if "planned_why" in case else "")
                )
            if case["verdict"] not in ("agree", "refused, as the plan says", "caught"):
                lines.append(
                    f"    {model_type}: {case['verdict']}: wrong {case['wrong'][:4]}, unwatched "
                    f"{case['unwatched']}, watched {case['watched']}, report "
                    f"{case['report_differs']}"
                )
    prepared = [r for r in ran if "accelerate" in r]
    if prepared:
        counts = Counter(r["accelerate"] for r in prepared)
        lines.append(
            "  accelerate's own FSDP2 preparation against --layout accelerate: "
            + ", ".join(f"{n} {v}" for v, n in counts.most_common())
        )
        for r in prepared:
            if r["accelerate"] not in ("same", "refused by accelerate, as the plan says"):
                lines.append(
                    f"    {r['type']}: {r['accelerate']} {r.get('accelerate_why', '')[:90]}"
                )
    return "\n".join(lines)


def main() -> None:
    command(__doc__ or "", survey, _line, summarize, __file__, after=_after)


if __name__ == "__main__":
    main()
