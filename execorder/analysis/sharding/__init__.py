"""FSDP2 plans from the recorded order: units, prefetch lists, and the checks that prevent hangs.

FSDP2 (``fully_shard``) all-gathers a unit's parameters for that unit's
forward and its backward, and nowhere else. Its explicit prefetching
(``set_modules_to_forward_prefetch`` and ``set_modules_to_backward_prefetch``)
takes static lists, which are right only when they follow the order the
units really run: a listed unit that does not run next is gathered early and
held. A plan is made from a report (what ran, in order, and which call used
which parameters) and the model's :class:`Layout` (every module, called or
not), so it needs no torch; :mod:`execorder.fsdp` makes both and applies the
plan to a sharded model.

- :mod:`.records`: the layout, units, checks and the plan, as frozen records;
- :mod:`.units`: choosing the units, and a report seen through them;
- :mod:`.prefetch`: the prefetch lists;
- :mod:`.checks`: what breaks FSDP2 or costs it;
- :mod:`.words`: the checks' sentences and the unit rule, in a vocabulary.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from execorder.analysis.sharding import checks as found
from execorder.analysis.sharding.kinds import (
    SEVERITY,
    SEVERITY_RANK,
    BackwardSource,
    CheckKind,
    Direction,
    LayoutChoice,
    Mistarget,
    ReshardPolicy,
    UnitChoice,
)
from execorder.analysis.sharding.prefetch import prefetch_lists
from execorder.analysis.sharding.records import (
    Check,
    DecoderParts,
    FsdpPlan,
    Gathers,
    Layout,
    LayoutModule,
    Unit,
    UnitRule,
)
from execorder.analysis.sharding.units import (
    DTYPE_BYTES,
    GROUP,
    UnitModel,
    build_units,
    check_choice,
    choose_units,
    expert_shard_dims,
    reshard_flags,
    untied,
)
from execorder.report import Report
from execorder.spelling import ROOT

__all__ = [
    "DTYPE_BYTES",
    "GROUP",
    "SEVERITY",
    "SEVERITY_RANK",
    "BackwardSource",
    "Check",
    "CheckKind",
    "DecoderParts",
    "Direction",
    "FsdpPlan",
    "Gathers",
    "Layout",
    "LayoutChoice",
    "LayoutModule",
    "Mistarget",
    "ReshardPolicy",
    "Unit",
    "UnitChoice",
    "UnitModel",
    "UnitRule",
    "check_choice",
    "choose_units",
    "plan_fsdp",
    "prefetch_lists",
]


def plan_fsdp(
    report: Report,
    layout: Layout,
    *,
    units: Sequence[str] = (),
    prefetch: int = 1,
    others: Sequence[tuple[Mapping[str, Any], Report]] = (),
    layout_choice: LayoutChoice | str = LayoutChoice.BLOCKS,
    reshard_after_forward: ReshardPolicy | str = ReshardPolicy.DEFAULT,
    world_size: int = 1,
    param_dtype: str | None = None,
    reduce_dtype: str | None = None,
) -> FsdpPlan:
    """Plan FSDP2 for a model from the order its forward ran.

    Args:
        report: What forward did (eager with a backward gives the real
            backward order; otherwise it is taken as reverse post-forward).
        layout: The model's modules.
        units: Class names or qualified names of the units (``a+b`` for a
            group); empty for the layout's rule (see :func:`choose_units`).
        prefetch: How many units each prefetch list names.
        others: With a sweep, the other runs (their concrete arguments and
            reports): units that run in some only, or in another order, are
            checked.
        layout_choice: The layout of units when ``units`` is empty.
        reshard_after_forward: The policy each unit's flag follows.
        world_size: The ranks the units are sharded over (for the bytes).
        param_dtype: The dtype parameters are gathered in (None: their own).
        reduce_dtype: The dtype gradients are reduced in (None: FSDP2's default).

    Raises:
        UnitError: If a unit name matches no module, or cannot be a unit.
        LayoutError: If the layout needs parts the model does not have.
        LayoutUnitsError: If units are named beside a layout that chooses them.
        ValueError: If ``prefetch`` or ``world_size`` is below 1, or a dtype
            is unknown.
    """
    if prefetch < 1:
        raise ValueError(f"prefetch must be 1 or more, not {prefetch}")
    if world_size < 1:
        raise ValueError(f"world_size must be 1 or more, not {world_size}")
    for dtype in (param_dtype, reduce_dtype):
        if dtype is not None and dtype not in DTYPE_BYTES:
            raise ValueError(f"unknown dtype {dtype!r}")
    choice, policy = LayoutChoice(layout_choice), ReshardPolicy(reshard_after_forward)
    specs, rule = choose_units(layout, units, choice)
    model, rule = untied(UnitModel(report, layout, specs), layout, rule)
    specs = tuple(model.specs.values())
    ended_last = next((u for u, _ in reversed(model.ended) if u != ROOT), None)
    head = layout.decoder.head if layout.decoder else None
    reshard = reshard_flags(policy, specs, ended_last, choice, head)
    # Each list names the units that run next, also one still gathered (not resharded
    # after forward): FSDP2's prefetch of it is a no-op, and the order stays the one run.
    forward = prefetch_lists(model.forward_sequence(), prefetch)
    backward_sequence, recorded = model.backward_sequence()
    backward = prefetch_lists(backward_sequence, prefetch)
    backward_order = list(dict.fromkeys(u for u, _ in backward_sequence))
    names = [p.name for p in report.all_params()]
    dims = expert_shard_dims(layout, choice, names, world_size)
    built = build_units(
        model, reshard, world_size=world_size, param_dtype=param_dtype, shard_dims=dims
    )
    checks = [
        *found.external_uses(model),
        *found.input_writes(model),
        *found.shared(model),
        *found.sweep_checks(model, report, layout, specs, others),
        *found.not_run(built),
        *found.registration_order(model, forward, backward, backward_order, prefetch),
        *found.assumptions(model),
        *found.split_gradients(
            built, report.split_gradients, set(report.recomputed_calls), report.own_checkpoints
        ),
        *found.repeated(built),
        *found.root_only(model.units),
    ]
    checks.sort(key=lambda c: SEVERITY_RANK[c.severity])
    ran = [u for u in built if u.first_call is not None]
    never = [u for u in built if u.first_call is None]
    return FsdpPlan(
        target=report.target,
        units=(*sorted(ran, key=lambda u: u.first_call or 0), *never),
        forward_prefetch=forward,
        backward_prefetch={u: backward[u] for u in model.ran() if u in backward},
        checks=tuple(checks),
        prefetch=prefetch,
        unit_rule=rule,
        backward_from=BackwardSource.RECORDED if recorded else BackwardSource.REVERSE,
        mode=str(report.mode),
        concrete_args=report.concrete_args,
        seed=report.seed,
        combinations=(report.concrete_args, *(args for args, _ in others)) if others else (),
        layout=choice,
        reshard_after_forward=policy,
        world_size=world_size,
        param_dtype=param_dtype,
        reduce_dtype=reduce_dtype,
        inputs_made=report.inputs_made,
        shard_dims=dims,
    )
