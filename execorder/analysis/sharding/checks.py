"""The checks of a plan: what breaks FSDP2 (fails, hangs, reads a shard) or costs it.

Each finds facts (units, parameters, calls, combinations) and makes a
:class:`~execorder.analysis.sharding.records.Check` of them; its words are
written in the plan's view (:mod:`execorder.output.views.fsdp`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from execorder.analysis.sharding.kinds import SEVERITY, CheckKind, Direction, Mistarget
from execorder.analysis.sharding.records import Check, Layout, Unit
from execorder.analysis.sharding.units import UnitModel, UnitSpec
from execorder.report import AssumptionKind, Report
from execorder.spelling import ROOT


def _check(
    kind: CheckKind, units: Sequence[str], params: Sequence[str] = (), **facts: Any
) -> Check:
    return Check(kind, SEVERITY[kind], tuple(units), tuple(params), **facts)


def external_uses(model: UnitModel) -> list[Check]:
    """A unit's parameters read by a call while that unit is not running: a shard is read."""
    return [
        _check(CheckKind.EXTERNAL_USE, (owner, model.unit_of(user)), params, user=user)
        for (owner, user), params in model.outside_reads().items()
    ]


def input_writes(model: UnitModel) -> list[Check]:
    """Units that write into a list, dict or dataclass they are passed holding a tensor that
    needs grad: FSDP2 passes a unit a copy of such an argument (the tensors replaced, to hook
    its backward), so the write is lost to the caller, and the job computes otherwise."""
    return [
        _check(CheckKind.INPUT_WRITE, (unit,), calls=calls)
        for unit, calls in model.input_writers().items()
    ]


def shared(model: UnitModel) -> list[Check]:
    """One parameter in two units: FSDP2 refuses it."""
    checks = []
    for info in model.params:
        holders = model.holders[info.name]
        if len(holders) > 1:
            checks.append(_check(CheckKind.SHARED, holders, (info.name, *info.aliases)))
    return checks


def not_run(built: Sequence[Unit]) -> list[Check]:
    """Units that never run in forward."""
    return [
        _check(CheckKind.NOT_RUN, (unit.name,), unit.param_names)
        for unit in built
        if unit.first_call is None and unit.name != ROOT
    ]


def split_gradients(
    built: Sequence[Unit],
    split: Collection[str],
    recomputed: Collection[int],
    own: tuple[str, ...] = (),
) -> list[Check]:
    """Units whose gradient comes in several backward passes, the last a recompute's.

    A reentrant checkpoint recomputes its block in a backward pass of its
    own. When a unit's parameters get their gradient in several passes and
    its first call in forward (so its last backward) is recomputed, FSDP2
    leaves an unsharded, unreduced gradient on its sharded parameters
    (``tests/test_fsdp_real.py``: a block checkpointed twice, or run again
    after its checkpoint). A unit run outside first, or one that runs the
    checkpoints inside it, is right. ``own``: the model's own checkpoint
    Functions that ran, if any (their advice is not torch's flag).
    """
    return [
        _check(CheckKind.SPLIT_GRADIENT, (unit.name,), found, calls=unit.calls, checkpoints=own)
        for unit in built
        if unit.name != ROOT
        and unit.first_call in recomputed
        and (found := tuple(p for p in unit.param_names if p in split))
    ]


def repeated(built: Sequence[Unit]) -> list[Check]:
    """Units that run more than once: gathered on each call."""
    return [
        _check(
            CheckKind.REPEATED,
            (unit.name,),
            calls=unit.calls,
            bytes=unit.gather_bytes,
            reshards=unit.reshard_after_forward,
        )
        for unit in built
        if unit.calls > 1 and unit.name != ROOT
    ]


def root_only(unit_names: Sequence[str]) -> list[Check]:
    """No unit but the root: the whole model is gathered at once."""
    return [_check(CheckKind.ROOT_ONLY, (ROOT,))] if len(unit_names) == 1 else []


def registration_order(
    model: UnitModel,
    forward: Mapping[str, tuple[str, ...]],
    backward: Mapping[str, tuple[str, ...]],
    backward_order: Sequence[str],
    count: int,
) -> list[Check]:
    """Where lists built from registration order (layer i prefetches layer i+1) mistarget."""
    blocks = [u for u in model.units if u != ROOT]
    checks = []
    for index, unit in enumerate(blocks):
        if unit not in model.first_call:
            continue
        directions = (
            (Direction.FORWARD, blocks[index + 1 : index + 1 + count], forward.get(unit, ())),
            (
                Direction.BACKWARD,
                blocks[max(0, index - count) : index][::-1],
                backward.get(unit, ()),
            ),
        )
        for direction, listed, right in directions:
            for target in listed:
                if target in right:
                    continue
                checks.append(
                    _check(
                        CheckKind.REGISTRATION_ORDER,
                        (unit, target),
                        calls=model.calls[unit],
                        direction=direction,
                        mistarget=_mistarget(model, unit, target, direction, backward_order),
                        listed=tuple(right),
                    )
                )
    return checks


def _mistarget(
    model: UnitModel, unit: str, target: str, direction: Direction, backward_order: Sequence[str]
) -> Mistarget:
    if target not in model.first_call:
        return Mistarget.NEVER_RUNS
    if model.calls[unit] > 1:
        return Mistarget.REPEATS
    if direction is Direction.BACKWARD:
        if backward_order.index(target) < backward_order.index(unit):
            return Mistarget.RAN_BACKWARD
        return Mistarget.NOT_NEXT_BACKWARD
    if model.first_call[target] < model.first_call[unit]:
        return Mistarget.RAN
    return Mistarget.NOT_NEXT


def assumptions(model: UnitModel) -> list[Check]:
    """The order rests on what a meta run assumed, on what forward drew at random, or on
    values it computed from parameters (a router's choice, in a run on a real device)."""
    report = model.report
    found = []
    for kind, assumed in (
        (CheckKind.ASSUMPTION, AssumptionKind.SELECTION),
        (CheckKind.RANDOM_CHOICE, AssumptionKind.DRAWN),
        (CheckKind.VALUES_CHOICE, AssumptionKind.COMPUTED),
    ):
        # A custom Function's unseen backward decides gradients, not the order.
        if made := report.assumed(assumed):
            found.append(
                _check(
                    kind,
                    tuple(dict.fromkeys(model.unit_of(a.module) for a in made)),
                    tuple(p.name for p in report.on_assumption),
                    assumed=tuple((a.op, a.module) for a in made),
                )
            )
    return found


def sweep_checks(
    model: UnitModel,
    report: Report,
    layout: Layout,
    units: Sequence[UnitSpec],
    others: Sequence[tuple[Mapping[str, Any], Report]],
) -> list[Check]:
    """Across a sweep: units that run for some values only, units run in another order."""
    if not others:
        return []
    runs = [(report.concrete_args, model)] + [
        (args, UnitModel(other, layout, units)) for args, other in others
    ]
    checks = []
    for unit in model.units:
        missing = [args for args, run in runs if unit not in run.first_call]
        if missing and len(missing) < len(runs):
            checks.append(_check(CheckKind.VARIES, (unit,), combinations=tuple(missing)))
    everywhere = [u for u in model.ran() if all(u in run.first_call for _, run in runs)]
    first = [u for u in model.ran() if u in everywhere]
    for args, run in runs[1:]:
        order = [u for u in run.ran() if u in everywhere]
        if order != first:
            checks.append(
                _check(
                    CheckKind.ORDER_VARIES,
                    tuple(u for u, v in zip(first, order, strict=True) if u != v),
                    combinations=(args,),
                )
            )
    return checks
