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
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from torch import nn

from execorder.analysis.sharding import (
    GROUP,
    CheckKind,
    DecoderParts,
    FsdpPlan,
    Layout,
    LayoutChoice,
    LayoutModule,
    ReshardPolicy,
    UnitModel,
    check_choice,
    plan_fsdp,
)
from execorder.analysis.sweep import check_axes, combinations
from execorder.errors import ExecOrderError, PlanMismatchError, SweepFailure
from execorder.profiling import Profiler
from execorder.report import Report, Severity
from execorder.report.kinds import Mode
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
    """The model's modules as FSDP sees them: names, classes, its repeated blocks, decoder parts."""
    names: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(id(module), []).append(name)
    modules = tuple(
        LayoutModule(name, type(module).__name__, tuple(names[id(module)][1:]))
        for name, module in model.named_modules()
    )
    no_split = getattr(model, "_no_split_modules", None) or ()
    repeated = _repeated_blocks(model)
    return Layout(
        modules,
        repeated,
        tuple(str(c) for c in no_split),
        _decoder(model, repeated, no_split),
        no_split_from=_no_split_from(model),
    )


_LIBRARIES = ("transformers", "diffusers")


def _no_split_from(model: nn.Module) -> str:
    """The library whose class of the model names its ``_no_split_modules`` (the first class
    that sets them, walking up from the model's); empty for a class of the model's own."""
    for cls in type(model).__mro__:
        if cls.__dict__.get("_no_split_modules"):
            library = cls.__module__.partition(".")[0]
            return library if library in _LIBRARIES else ""
    return ""


_NORM_NAMES = ("norm", "final_layernorm", "final_layer_norm", "ln_f", "norm_f")


def _decoder(model: nn.Module, repeated: Sequence[str], no_split: Sequence[str]) -> DecoderParts:
    """The input embedding, final norm and output head of a decoder, where they can be found.

    torchtitan's decoders name them ``tok_embeddings``, ``norm`` and
    ``lm_head`` (and say ``enable_weight_tying``); transformers' models give
    ``get_input_embeddings()`` and ``get_output_embeddings()``, and their
    final norm is the norm beside the blocks' list, registered after it.
    """
    first = {id(m): name for name, m in model.named_modules()}

    def name_of(module: Any) -> str | None:
        return first.get(id(module)) if isinstance(module, nn.Module) else None

    embedding = head = norm = None
    experts: list[tuple[str, int]] = []
    vision = None
    if all(hasattr(model, a) for a in ("tok_embeddings", "layers", "lm_head")):  # torchtitan
        embedding, head = name_of(model.tok_embeddings), name_of(model.lm_head)
        norm = name_of(getattr(model, "norm", None))
        experts = _torchtitan_experts(model, name_of)
        vision = name_of(getattr(model, "vision_encoder", None))
    else:
        embedding = name_of(_call(model, "get_input_embeddings"))
        head = name_of(_call(model, "get_output_embeddings"))
        norm = _final_norm(model, {*repeated, *no_split})
    weights = [
        getattr(model.get_submodule(n), "weight", None) if n else None for n in (embedding, head)
    ]
    tied = weights[0] is not None and weights[0] is weights[1]
    return DecoderParts(
        embedding, norm, head, tied, tuple(experts), vision, _base_norm(model, name_of)
    )


def _base_norm(model: nn.Module, name_of: Any) -> str | None:
    """The last module among the base model's direct children whose class name says Norm:
    the final norm as accelerate's FSDP2 preparation finds it (``_find_final_norm``)."""
    prefix = getattr(model, "base_model_prefix", "")
    base = getattr(model, prefix, None) if prefix else model
    if not isinstance(base, nn.Module):
        return None
    norms = [child for _, child in base.named_children() if "Norm" in type(child).__name__]
    return name_of(norms[-1]) if norms else None


def _torchtitan_experts(model: nn.Module, name_of: Any) -> list[tuple[str, int]]:
    """Each mixture-of-experts block's grouped experts and their count, found as
    torchtitan's ``apply_fsdp_to_decoder`` finds them."""
    layers: Any = model.layers
    found = []
    for block in layers.values() if isinstance(layers, nn.ModuleDict) else layers:
        if not getattr(block, "moe_enabled", False):
            continue
        routed = getattr(getattr(block, "moe", None), "routed_experts", None)
        inner = getattr(routed, "inner_experts", None)
        name, count = name_of(inner), getattr(inner, "num_experts", None)
        if name and isinstance(count, int):
            found.append((name, count))
    return found


def _call(model: nn.Module, getter: str) -> Any:
    """``model.getter()`` where the model has it and it answers, else None."""
    try:
        return getattr(model, getter)() if hasattr(model, getter) else None
    except (AttributeError, NotImplementedError):
        return None


def _final_norm(model: nn.Module, blocks: set[str]) -> str | None:
    """The norm after the blocks: a sibling of the blocks' list, registered after it, that is
    not the embedding's (BART registers ``layernorm_embedding`` there; it runs first)."""
    for name, module in model.named_modules():
        children = list(module.named_children())
        for index, (_, child) in enumerate(children):
            if isinstance(child, _CONTAINERS) and any(
                type(c).__name__ in blocks for c in child.children()
            ):
                after = [  # not the norm of the embedding (BART's layernorm_embedding)
                    (n, c)
                    for n, c in children[index + 1 :]
                    if (n in _NORM_NAMES or "norm" in type(c).__name__.lower())
                    and "embed" not in n.lower()
                ]
                if after:
                    return f"{name}.{after[0][0]}" if name else after[0][0]
                return None
    return None


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
    layout: LayoutChoice | str = LayoutChoice.BLOCKS,
    reshard_after_forward: ReshardPolicy | str = ReshardPolicy.DEFAULT,
    world_size: int = 1,
    param_dtype: Any = None,
    reduce_dtype: Any = None,
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
            units, ``"norm+lm_head"`` for a group sharded as one unit
            (``fully_shard([norm, lm_head])``); empty: the layout's rule.
        prefetch: How many units each prefetch list names.
        concrete_args: Fixed values for forward's arguments.
        sweep: Arguments to sweep, each with its values: units that run for
            some values only (ranks that disagree hang) are checked.
        layout: ``"blocks"``: the model's ``_no_split_modules`` where the
            model has them, else the class of its repeated blocks;
            ``"torchtitan"``: torchtitan's decoder layout (the embedding,
            each block, the final norm and output head as one group);
            ``"accelerate"``: accelerate's FSDP2 preparation of a
            transformers model (the same, its blocks from
            ``_no_split_modules`` alone, its final norm the base model's
            last).
        reshard_after_forward: ``"default"`` (torchtitan's rule), ``"always"``
            or ``"never"``: each unit's ``reshard_after_forward``.
        world_size: The ranks the units are sharded over: each unit's
            ``shard_bytes`` and padded ``gather_bytes``.
        param_dtype: The dtype parameters are gathered in, as FSDP2's
            ``MixedPrecisionPolicy`` (a ``torch.dtype`` or its name).
        reduce_dtype: The dtype gradients are reduced in.
        **options: The options of :class:`~execorder.Profiler` (``inputs``,
            ``input_size``, ``backward``, ``device``, ``seed``, ...). With
            ``backward=True`` the backward lists follow a real backward.

    Raises:
        UnitError: If a unit name matches no module.
        LayoutUnitsError: If units are named beside a layout that chooses them.
        TraceFailure, TargetError, ModeError: As :func:`execorder.profile`.
        SweepFailure: If one combination of a sweep cannot be profiled.
    """
    return plan_and_report(
        Profiler(model, **options),
        units=units,
        prefetch=prefetch,
        concrete_args=concrete_args,
        sweep=sweep,
        layout=layout,
        reshard_after_forward=reshard_after_forward,
        world_size=world_size,
        param_dtype=param_dtype,
        reduce_dtype=reduce_dtype,
    )[0]


def plan_and_report(
    profiler: Profiler,
    *,
    units: Sequence[str] = (),
    prefetch: int = 1,
    concrete_args: Mapping[str, Any] | None = None,
    sweep: Sequence[tuple[str, Sequence[Any]]] = (),
    layout: LayoutChoice | str = LayoutChoice.BLOCKS,
    reshard_after_forward: ReshardPolicy | str = ReshardPolicy.DEFAULT,
    world_size: int = 1,
    param_dtype: Any = None,
    reduce_dtype: Any = None,
) -> tuple[FsdpPlan, Report]:
    """:func:`plan` with a :class:`~execorder.Profiler` of the caller's (its notes stay there),
    and the report of the run the plan follows (for its pictures)."""
    fixed = dict(concrete_args or {})
    check_axes(sweep, fixed)
    check_choice(units, LayoutChoice(layout))  # before any forward runs
    runs = []
    combos = combinations(sweep) if sweep else [{}]
    for number, combo in enumerate(combos, 1):
        told: AbstractContextManager[Any] = (
            profiler.combination(number, len(combos)) if sweep else nullcontext()
        )
        try:
            with told:
                runs.append(({**fixed, **combo}, profiler.run({**fixed, **combo}).report))
        except ExecOrderError as exc:
            if not sweep:
                raise
            raise SweepFailure(combo, exc) from exc
    made = plan_fsdp(
        runs[0][1],
        model_layout(profiler.model),
        units=units,
        prefetch=prefetch,
        others=runs[1:],
        layout_choice=layout,
        reshard_after_forward=reshard_after_forward,
        world_size=world_size,
        param_dtype=dtype_name(param_dtype),
        reduce_dtype=dtype_name(reduce_dtype),
    )
    return made, runs[0][1]


def dtype_name(dtype: Any) -> str | None:
    """A dtype's name as reports give it (``bfloat16``), from a ``torch.dtype`` or a name."""
    if dtype is None:
        return None
    return str(dtype).removeprefix("torch.")


model_layout = layout  # the function, where a parameter is called ``layout``


def _modules(
    model: nn.Module, plan: FsdpPlan, problems: list[str]
) -> dict[str, tuple[nn.Module, ...]]:
    """The plan's units in ``model`` (each its modules), checked to be there and of its classes."""
    found = {}
    for unit in plan.units:
        types = unit.type.split(GROUP) if unit.type else [""] * len(unit.modules)
        members = []
        for name, wanted in zip(unit.modules, types, strict=False):
            try:
                module = model.get_submodule(name)
            except AttributeError:
                problems.append(f"it has no module {name!r}")
                continue
            classes = {cls.__name__ for cls in type(module).__mro__}
            if wanted and wanted not in classes:
                problems.append(
                    f"{label(name)} is a {type(module).__name__}, the plan's unit is a {wanted}"
                )
                continue
            members.append(module)
        if len(members) == len(unit.modules):
            found[unit.name] = tuple(members)
    for lists in (plan.forward_prefetch, plan.backward_prefetch):
        for name, targets in lists.items():
            for other in (name, *targets):
                if all(u.name != other for u in plan.units):
                    problems.append(f"its prefetch lists name {label(other)}, not one of its units")
    return found


def apply(model: nn.Module, plan: FsdpPlan | Mapping[str, Any]) -> None:
    """Set every unit's forward and backward prefetch lists from the plan.

    Call it after ``fully_shard`` on each unit (a group's modules in one
    call: ``fully_shard([norm, lm_head])``) and then on the root, on every
    rank. Nothing is set unless the whole plan fits.

    Args:
        model: The root module, sharded.
        plan: A plan, or its JSON (``execorder fsdp --format json``) loaded.

    Raises:
        PlanMismatchError: If a unit is missing, of another class, not
            sharded (a group: not sharded as one), or the model has a
            sharded module the plan does not name.
        SchemaError: If ``plan`` is a dict that is not a plan.
    """
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(plan, FsdpPlan):
        plan = FsdpPlan.from_dict(plan)
    problems: list[str] = []
    units = _modules(model, plan, problems)
    for name, members in units.items():
        if not all(isinstance(m, FSDPModule) for m in members):
            problems.append(
                f"{label(name)} is not sharded: call fully_shard on it first "
                "(or let execorder.fsdp.shard do it)"
            )
        elif len({id(m._get_fsdp_state()) for m in members}) > 1:  # type: ignore[operator]
            problems.append(
                f"{label(name)} is sharded module by module, the plan's unit is one group: "
                f"fully_shard([{', '.join(plan.unit(name).modules)}])"
            )
    planned = {id(m) for members in units.values() for m in members}
    for name, module in model.named_modules():
        if isinstance(module, FSDPModule) and id(module) not in planned:
            problems.append(f"{label(name)} is sharded, but the plan has no unit {label(name)}")
    if problems:
        raise PlanMismatchError(problems)
    for name, members in units.items():
        # A group's modules share one FSDP state: its lists are set once, on the first.
        forward = [units[t][0] for t in plan.forward_prefetch.get(name, ())]
        backward = [units[t][0] for t in plan.backward_prefetch.get(name, ())]
        members[0].set_modules_to_forward_prefetch(forward)  # type: ignore[operator]
        members[0].set_modules_to_backward_prefetch(backward)  # type: ignore[operator]


def shard(
    model: nn.Module, plan: FsdpPlan | Mapping[str, Any], **fully_shard_kwargs: Any
) -> nn.Module:
    """Shard ``model`` by the plan: ``fully_shard`` on each unit, innermost first, then the root.

    A group is sharded as one (``fully_shard([norm, lm_head])``); each unit
    gets the plan's ``reshard_after_forward`` and, when the plan has a param
    or reduce dtype, its ``MixedPrecisionPolicy``. Then :func:`apply` sets
    the prefetch lists. Run it on every rank, inside an initialized process
    group.

    Args:
        model: The root module, not sharded yet.
        plan: A plan, or its JSON loaded.
        **fully_shard_kwargs: Passed to every ``fully_shard`` call (``mesh``,
            ``offload_policy``, ...); ``reshard_after_forward`` or
            ``mp_policy`` given here replace the plan's for every unit.

    Returns:
        The model, sharded (``fully_shard`` changes it in place).

    Raises:
        PlanMismatchError: If the plan does not fit the model; nothing is
            sharded then.
    """
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if not isinstance(plan, FsdpPlan):
        plan = FsdpPlan.from_dict(plan)
    problems: list[str] = []
    units = _modules(model, plan, problems)
    if problems:
        raise PlanMismatchError(problems)
    kwargs = dict(fully_shard_kwargs)
    if "mp_policy" not in kwargs and (plan.param_dtype or plan.reduce_dtype):
        kwargs["mp_policy"] = MixedPrecisionPolicy(
            param_dtype=getattr(torch, plan.param_dtype) if plan.param_dtype else None,
            reduce_dtype=getattr(torch, plan.reduce_dtype) if plan.reduce_dtype else None,
        )
    inner_first = sorted(
        (u for u in plan.units if u.name != ROOT),
        key=lambda u: -max(m.count(".") for m in u.modules),
    )
    placed = _placements(model, plan)
    for unit in inner_first:
        members = units[unit.name]
        own = {**placed, **kwargs} if set(unit.param_names) & set(plan.shard_dims) else kwargs
        fully_shard(
            list(members) if unit.grouped else members[0],
            **{"reshard_after_forward": unit.reshard_after_forward, **own},
        )
    fully_shard(model, **({**placed, **kwargs} if plan.unit(ROOT).param_names else kwargs))
    apply(model, plan)
    return model


def _placements(model: nn.Module, plan: FsdpPlan) -> dict[str, Any]:
    """``fully_shard``'s ``shard_placement_fn`` for the plan's ``shard_dims``; none if empty."""
    if not plan.shard_dims:
        return {}
    from torch.distributed.tensor import Shard

    dims = {id(p): plan.shard_dims[n] for n, p in model.named_parameters() if n in plan.shard_dims}

    def placement(param: nn.Parameter) -> Any:
        return Shard(dims[id(param)]) if id(param) in dims else None

    return {"shard_placement_fn": placement}


def plan_memory(
    profiler: Profiler,
    plan: FsdpPlan,
    report: Report,
    *,
    optimizer: str = "adamw",
    foreach: bool = True,
    budget: int | None = None,
    concrete_args: Mapping[str, Any] | None = None,
    checkpointed: bool = False,
    alternatives: bool = True,
) -> FsdpPlan:
    """The plan with what one rank holds in a training step under it (``plan.memory``).

    The optimizer steps as on CUDA (``foreach``), or one parameter at a time
    (``foreach=False``, as on CPU). FSDP2 itself runs the step: the model is
    built anew on meta (shapes, no memory; one given as a module is copied
    there, its tensors made anew without values, the caller's untouched),
    sharded by the plan over a fake process group of the plan's world
    size (collectives that move nothing; see
    :mod:`execorder.backends.fsdp_meta`), and two training steps run under
    :func:`execorder.backends.memory.measure`, as a meta trace runs them
    (inputs real, a selection made from parameters' values assumed to keep
    every element, and the result saying so), following every storage FSDP2
    and the model make, the gathered parameters FSDP2 frees and refills in
    place included. With a budget the peak exceeds, the plan gains a
    ``memory`` check, and (``alternatives``) each change that may bring it
    under is measured the same way: more ranks (doubled up to
    :data:`RANK_DOUBLINGS` times, until one fits), prefetch 1, every unit
    resharding after forward, each unit's activations checkpointed
    (``checkpointed``: recomputed in backward,
    ``torch.distributed._composable.checkpoint`` on each unit but the root
    and groups), and, when none fits alone, all of them together.

    Raises:
        TargetError: For a model given as an instance that cannot be copied.
        ModeError: For a profiler given no inputs (the step runs forward).
        PlanMemoryError: Inside a process group already, or when the step
            cannot run on meta (a value read from parameters, such as
            ``.item()`` of a router's output).
    """
    import dataclasses

    import torch.distributed as dist

    from execorder.analysis.sharding import Check
    from execorder.analysis.sharding.kinds import SEVERITY
    from execorder.backends.fsdp_meta import FsdpOnMetaError, fake_process_group, fsdp_on_meta
    from execorder.backends.memory import measure
    from execorder.errors import Arg, ModeError, PlanMemoryError

    if dist.is_initialized():
        raise PlanMemoryError("this process is in a process group already; run it outside one")
    if not profiler.inputs:  # a plan traced with fx: the step needs forward's inputs
        raise ModeError(None, Mode.EAGER, needs=Arg.MEMORY)
    try:
        with fsdp_on_meta(), fake_process_group(plan.world_size) as mesh:
            model = profiler.fresh_model("meta")
            if checkpointed:
                from torch.distributed._composable import checkpoint

                for each in plan.units:
                    if each.name != ROOT and not each.grouped:
                        checkpoint(model.get_submodule(each.name))
            shard(model, plan, mesh=mesh)
            args, kwargs = profiler.step_arguments("meta", dict(concrete_args or {}))
            try:
                memory = measure(
                    model,
                    args=args,
                    kwargs=kwargs,
                    optimizer=optimizer,
                    foreach=foreach,
                    assume=profiler.assume,
                )
            except Exception as exc:
                raise PlanMemoryError(
                    f"the step cannot run on meta ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''})"
                ) from exc
    except FsdpOnMetaError as exc:
        raise PlanMemoryError(str(exc)) from exc
    call = memory.peak_at.call
    unit = None
    if call is not None:
        units = UnitModel(report, layout(profiler.model), [u.modules for u in plan.units])
        unit = units.unit_of(report.modules[call].name)
    memory = dataclasses.replace(
        memory,
        budget_bytes=budget,
        peak_unit=unit,
        world_size=plan.world_size,
        ddp_buckets_bytes=None,
    )
    checks = plan.checks
    if memory.over_budget and alternatives:
        memory = dataclasses.replace(
            memory,
            alternatives=_alternatives(
                profiler,
                plan,
                report,
                optimizer=optimizer,
                foreach=foreach,
                budget=budget or 0,
                concrete_args=concrete_args,
            ),
        )
    if memory.over_budget:
        largest = tuple((kind.value, size) for kind, size in memory.largest())
        found = Check(
            CheckKind.MEMORY,
            SEVERITY[CheckKind.MEMORY],
            (unit,) if unit is not None else (),
            (),
            bytes=memory.peak_bytes,
            budget=budget or 0,
            largest=largest,
        )
        checks = (found, *checks)
    return dataclasses.replace(plan, memory=memory, checks=checks)


RANK_DOUBLINGS = 3
"""Over budget, the world size is doubled up to this many times (8x) to find one that fits."""


def _alternatives(
    profiler: Profiler,
    plan: FsdpPlan,
    report: Report,
    *,
    optimizer: str,
    foreach: bool,
    budget: int,
    concrete_args: Mapping[str, Any] | None,
) -> tuple[Any, ...]:
    """Each change that may bring one rank under budget, with the peak it gives, measured;
    and when none fits alone, all of them together (with the most ranks tried)."""
    import dataclasses

    from execorder.report.memory import Alternative, Choice

    def prefetch_one(plan: FsdpPlan) -> FsdpPlan:
        return dataclasses.replace(
            plan,
            prefetch=1,
            forward_prefetch={u: t[:1] for u, t in plan.forward_prefetch.items()},
            backward_prefetch={u: t[:1] for u, t in plan.backward_prefetch.items()},
        )

    def reshard(plan: FsdpPlan) -> FsdpPlan:
        units = tuple(
            dataclasses.replace(u, reshard_after_forward=u.name != ROOT) for u in plan.units
        )
        return dataclasses.replace(plan, units=units)

    def same(plan: FsdpPlan) -> FsdpPlan:
        return plan

    # Each change: the plan it gives, and whether each unit's activations are checkpointed.
    changes: list[tuple[Choice, Callable[[FsdpPlan], FsdpPlan], bool]] = []
    if plan.prefetch > 1:
        changes.append((Choice.PREFETCH_ONE, prefetch_one, False))
    if any(not u.reshard_after_forward for u in plan.units if u.name != ROOT):
        changes.append((Choice.RESHARD, reshard, False))
    changes.append((Choice.CHECKPOINT, same, True))

    def measured(choice: Choice, changed: FsdpPlan, checkpointed: bool) -> Alternative:
        memory = plan_memory(
            profiler,
            changed,
            report,
            optimizer=optimizer,
            foreach=foreach,
            concrete_args=concrete_args,
            checkpointed=checkpointed,
            alternatives=False,
        ).memory
        assert memory is not None
        return Alternative(choice, memory.peak_bytes, changed.world_size)

    # More ranks: twice as many, then four and eight times, until one fits or stops helping.
    ranks = measured(
        Choice.MORE_RANKS, dataclasses.replace(plan, world_size=plan.world_size * 2), False
    )
    for _ in range(RANK_DOUBLINGS - 1):
        if ranks.peak_bytes <= budget:
            break
        wider = measured(
            Choice.MORE_RANKS, dataclasses.replace(plan, world_size=ranks.world_size * 2), False
        )
        if wider.peak_bytes >= ranks.peak_bytes:
            break
        ranks = wider
    found = [ranks] + [measured(choice, change(plan), kept) for choice, change, kept in changes]
    if all(each.peak_bytes > budget for each in found):
        combined = dataclasses.replace(plan, world_size=ranks.world_size)
        for _, change, _ in changes:
            combined = change(combined)
        found.append(measured(Choice.ALL, combined, any(kept for *_, kept in changes)))
    return tuple(found)
