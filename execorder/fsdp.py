"""Plan FSDP2 from the order forward really runs, and apply the plan to a sharded model.

:func:`plan` profiles a model (as :func:`execorder.profile` does, on the
meta device by default) and returns an
:class:`~execorder.analysis.sharding.FsdpPlan`: the ``fully_shard`` units, each
unit's forward and backward prefetch lists from the recorded order, and the
checks that would otherwise surface on a cluster as an error or a hang.
:func:`apply` sets the lists on a model the user sharded; :func:`shard` does
the sharding too.

    plan = execorder.fsdp.plan("pkg.models:Net", input_size="int64[1,32]")
    model = build_model()                # on every rank
    execorder.fsdp.shard(model, plan)    # fully_shard each unit, then the root
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from execorder.analysis.sharding import CheckKind, FsdpPlan, Layout, LayoutModule, plan_fsdp
from execorder.analysis.sweep import check_axes, combinations
from execorder.errors import ExecOrderError, PlanMismatchError, SweepFailure
from execorder.profiling import Profiler
from execorder.report import Report, Severity
from execorder.spelling import ROOT, label

__all__ = [
    "CheckKind",
    "FsdpPlan",
    "Layout",
    "Severity",
    "apply",
    "layout",
    "plan",
    "plan_and_report",
    "shard",
]

_CONTAINERS = (nn.ModuleList, nn.Sequential, nn.ModuleDict)


def layout(model: nn.Module) -> Layout:
    """The model's modules as FSDP sees them: names, classes, its repeated blocks."""
    names: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(id(module), []).append(name)
    modules = tuple(
        LayoutModule(name, type(module).__name__, tuple(names[id(module)][1:]))
        for name, module in model.named_modules()
    )
    no_split = getattr(model, "_no_split_modules", None) or ()
    return Layout(modules, _repeated_blocks(model), tuple(str(c) for c in no_split))


def _repeated_blocks(model: nn.Module) -> tuple[str, ...]:
    """Classes of the outermost repeated blocks (the items of a layer list), in order met."""
    found: list[str] = []
    inside: list[str] = []  # prefixes of the blocks found: nothing under them counts
    for name, module in model.named_modules():
        if any(name.startswith(prefix) for prefix in inside):
            continue
        if module is not model and type(module).__name__ in found:
            inside.append(name + ".")  # a block: what is inside it is not a block
        elif isinstance(module, _CONTAINERS):
            counts = Counter(type(c).__name__ for c in module.children() if _has_params(c))
            found.extend(c for c, n in counts.items() if n >= 2 and c not in found)
    return tuple(found)


def _has_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def plan(
    model: nn.Module | str | Any,
    *,
    units: Sequence[str] = (),
    prefetch: int = 1,
    concrete_args: Mapping[str, Any] | None = None,
    sweep: Sequence[tuple[str, Sequence[Any]]] = (),
    **options: Any,
) -> FsdpPlan:
    """Plan FSDP2 for a model from the order its forward runs.

    Example:
        >>> p = execorder.fsdp.plan(LlamaForCausalLM(config), input_size="int64[1,16]")
        >>> [u.name for u in p.units]
        ['', 'model.layers.0', 'model.layers.1']
        >>> dict(p.forward_prefetch)
        {'': ('model.layers.0',), 'model.layers.0': ('model.layers.1',), 'model.layers.1': ()}

    Args:
        model: A module, a class or function building one, or a ``TARGET``.
        units: Class names or qualified names of the modules to shard as
            units; empty: transformers' ``_no_split_modules`` where the model
            has them, else the class of its repeated blocks.
        prefetch: How many units each prefetch list names.
        concrete_args: Fixed values for forward's arguments.
        sweep: Arguments to sweep, each with its values: units that run for
            some values only (ranks that disagree hang) are checked.
        **options: The options of :class:`~execorder.Profiler` (``inputs``,
            ``input_size``, ``backward``, ``device``, ``seed``, ...). With
            ``backward=True`` the backward lists follow a real backward.

    Raises:
        UnitError: If a unit name matches no module.
        TraceFailure, TargetError, ModeError: As :func:`execorder.profile`.
        SweepFailure: If one combination of a sweep cannot be profiled.
    """
    return plan_and_report(
        Profiler(model, **options),
        units=units,
        prefetch=prefetch,
        concrete_args=concrete_args,
        sweep=sweep,
    )[0]


def plan_and_report(
    profiler: Profiler,
    *,
    units: Sequence[str] = (),
    prefetch: int = 1,
    concrete_args: Mapping[str, Any] | None = None,
    sweep: Sequence[tuple[str, Sequence[Any]]] = (),
) -> tuple[FsdpPlan, Report]:
    """:func:`plan` with a :class:`~execorder.Profiler` of the caller's (its notes stay there),
    and the report of the run the plan follows (for its pictures)."""
    fixed = dict(concrete_args or {})
    check_axes(sweep, fixed)
    runs = []
    for combo in combinations(sweep) if sweep else [{}]:
        try:
            runs.append(({**fixed, **combo}, profiler.run({**fixed, **combo}).report))
        except ExecOrderError as exc:
            if not sweep:
                raise
            raise SweepFailure(combo, exc) from exc
    made = plan_fsdp(
        runs[0][1], layout(profiler.model), units=units, prefetch=prefetch, others=runs[1:]
    )
    return made, runs[0][1]


def _modules(model: nn.Module, plan: FsdpPlan, problems: list[str]) -> dict[str, nn.Module]:
    """The plan's units in ``model``, each checked to be there and of the plan's class."""
    found = {}
    for unit in plan.units:
        try:
            module = model.get_submodule(unit.name)
        except AttributeError:
            problems.append(f"it has no module {unit.name!r}")
            continue
        classes = {cls.__name__ for cls in type(module).__mro__}
        if unit.type and unit.type not in classes:
            problems.append(
                f"{label(unit.name)} is a {type(module).__name__}, the plan's unit is a {unit.type}"
            )
            continue
        found[unit.name] = module
    for lists in (plan.forward_prefetch, plan.backward_prefetch):
        for name, targets in lists.items():
            for other in (name, *targets):
                if all(u.name != other for u in plan.units):
                    problems.append(f"its prefetch lists name {label(other)}, not one of its units")
    return found


def apply(model: nn.Module, plan: FsdpPlan | Mapping[str, Any]) -> None:
    """Set every unit's forward and backward prefetch lists from the plan.

    Call it after ``fully_shard`` on each unit and then on the root, on every
    rank. Nothing is set unless the whole plan fits.

    Args:
        model: The root module, sharded.
        plan: A plan, or its JSON (``execorder fsdp --format json``) loaded.

    Raises:
        PlanMismatchError: If a unit is missing, of another class, not
            sharded, or the model has a sharded module the plan does not
            name.
        SchemaError: If ``plan`` is a dict that is not a plan.
    """
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(plan, FsdpPlan):
        plan = FsdpPlan.from_dict(plan)
    problems: list[str] = []
    modules = _modules(model, plan, problems)
    for name, module in modules.items():
        if not isinstance(module, FSDPModule):
            problems.append(
                f"{label(name)} is not sharded: call fully_shard on it first "
                "(or let execorder.fsdp.shard do it)"
            )
    planned = {id(m) for m in modules.values()}
    for name, module in model.named_modules():
        if isinstance(module, FSDPModule) and id(module) not in planned:
            problems.append(f"{label(name)} is sharded, but the plan has no unit {label(name)}")
    if problems:
        raise PlanMismatchError(problems)
    for name, module in modules.items():
        forward = [modules[t] for t in plan.forward_prefetch.get(name, ())]
        backward = [modules[t] for t in plan.backward_prefetch.get(name, ())]
        module.set_modules_to_forward_prefetch(forward)  # type: ignore[operator]
        module.set_modules_to_backward_prefetch(backward)  # type: ignore[operator]


def shard(
    model: nn.Module, plan: FsdpPlan | Mapping[str, Any], **fully_shard_kwargs: Any
) -> nn.Module:
    """Shard ``model`` by the plan: ``fully_shard`` on each unit, innermost first, then the root.

    Then :func:`apply` sets the prefetch lists. Run it on every rank, inside
    an initialized process group.

    Args:
        model: The root module, not sharded yet.
        plan: A plan, or its JSON loaded.
        **fully_shard_kwargs: Passed to every ``fully_shard`` call (``mesh``,
            ``reshard_after_forward``, ``mp_policy``, ...).

    Returns:
        The model, sharded (``fully_shard`` changes it in place).

    Raises:
        PlanMismatchError: If the plan does not fit the model; nothing is
            sharded then.
    """
    from torch.distributed.fsdp import fully_shard

    if not isinstance(plan, FsdpPlan):
        plan = FsdpPlan.from_dict(plan)
    problems: list[str] = []
    modules = _modules(model, plan, problems)
    if problems:
        raise PlanMismatchError(problems)
    inner_first = sorted(
        (u.name for u in plan.units if u.name != ROOT), key=lambda n: -n.count(".")
    )
    for name in inner_first:
        fully_shard(modules[name], **fully_shard_kwargs)
    fully_shard(model, **fully_shard_kwargs)
    apply(model, plan)
    return model
