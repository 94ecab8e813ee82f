"""The report builder: names what a :class:`Recorder` collected and freezes it.

Liveness is not computed here: each backend finds which parameters reach an
output while it records (FX from its graph, eager from the autograd graph or
the backward that ran) and hands the builder the live set.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from execorder.recording.events import CallRecord, Recorder
from execorder.recording.tree import class_name, ddp_registered
from execorder.report import (
    Assumption,
    AssumptionKind,
    ExternalUse,
    Mode,
    ModuleCall,
    OutputReach,
    ParamGroup,
    ParamInfo,
    Report,
    Summary,
)


def build_report(
    recorder: Recorder,
    *,
    target: str,
    mode: Mode,
    concrete_args: Mapping[str, Any] | None = None,
    live: Collection[nn.Parameter] | None = None,
    backward: Sequence[nn.Parameter] | None = None,
    inputs: Mapping[str, str] | None = None,
    trainable: Collection[nn.Parameter] | None = None,
    defaults: Mapping[str, Any] | None = None,
    outputs: Sequence[tuple[str, Collection[nn.Parameter]]] | None = None,
    passes: Mapping[nn.Parameter, Collection[Any]] | None = None,
    main_passes: Collection[Any] | None = (None,),
    backwards: Mapping[nn.Parameter, Collection[Any]] | None = None,
    compiled: bool = False,
    ddp_params: Sequence[nn.Parameter] | None = None,
    unrecomputed: Collection[str] = (),
) -> Report:
    """Name everything ``recorder`` collected and freeze it into a :class:`Report`.

    Args:
        recorder: The events of one forward.
        target: What was traced.
        mode: The backend.
        concrete_args: The concrete arguments of the trace.
        live: Parameters with a use that reaches an output, from the
            backend's liveness analysis; the other used trainable
            parameters are dead. None when there was no such analysis.
        backward: Parameters in the order their gradients were accumulated,
            when a backward was run.
        inputs: Descriptions of the input tensors, by argument name.
        trainable: The parameters that required grad before forward ran (what
            DDP registers); forward may switch one off. None: as they are now.
        defaults: forward's arguments a real run left to their defaults, with
            their values (they may choose a branch).
        outputs: For each of forward's outputs, by path, the parameters with
            a use that reaches it, when the backend walked them one by one
            (several outputs carry a gradient, and no backward of the
            caller's own decided liveness).
        passes: For each live parameter, the backward passes its gradient
            arrives in (a reentrant checkpoint's block runs one of its own),
            when the backend told them apart.
        main_passes: Which of those are the backward itself, not a
            recompute's (None for a walk's; the caller's own graph tasks
            after a real backward); None when that is not known. A
            parameter in none of them is ``recompute_only`` (DDP's search
            for unused parameters does not see it).
        backwards: For each parameter that got a gradient, the caller's own
            backward calls it arrived in (a recompute's pass counts as the
            one it runs inside), when the backend told them apart.
        compiled: Whether forward ran compiled code (``torch.compile``),
            eagerly to be recorded: a dead parameter is dead in eager's graph,
            while the compiled graph holds what it reads as an input, which
            DDP counts ready; so each rests on that (``COMPILED``).
        ddp_params: The parameters a ``DistributedDataParallel`` that ignores
            some registers, in its order (:func:`ddp_registered`). None: those
            of the root that its ``_ddp_params_and_buffers_to_ignore`` does
            not name, as DDP would register them.
        unrecomputed: The parameters, by first name, forward read only inside
            reentrant checkpoints' blocks torch never recomputes (none of a
            block's inputs needed grad): those of them that are dead are
            ``never_recomputed``.
    """
    if ddp_params is None:
        ignored = getattr(recorder.root, "_ddp_params_and_buffers_to_ignore", None)
        if ignored and not isinstance(ignored, str):
            ddp_params = ddp_registered(recorder.root, ignored)
    with torch._C.DisableTorchFunctionSubclass():  # reading parameters runs no user code
        report = _build(
            recorder,
            target,
            mode,
            concrete_args,
            live,
            backward,
            inputs,
            trainable,
            compiled,
            ddp_params,
        )
    if outputs is not None:
        reach = _output_reach(recorder, outputs, trainable)
        report = dataclasses.replace(report, output_reach=reach)
    passes = passes or {}
    split = _split(recorder, {p: len(runs) for p, runs in passes.items()}, trainable)
    if split:
        report = dataclasses.replace(report, split_gradients=split)
    across = [p for p, runs in (backwards or {}).items() if len(runs) > 1]
    by_backwards = _named(recorder, across, trainable) if across else ()
    if by_backwards:
        report = dataclasses.replace(report, split_by_backwards=by_backwards)
    if main_passes is not None:
        only = [p for p, runs in passes.items() if set(main_passes).isdisjoint(runs)]
        hidden = _named(recorder, only, trainable)
        if hidden:
            report = dataclasses.replace(report, recompute_only=hidden)
    if recorder.recomputed:
        report = dataclasses.replace(report, recomputed_calls=tuple(recorder.recomputed))
    if dead := tuple(p.name for p in report.all_params() if p.dead and p.name in unrecomputed):
        report = dataclasses.replace(report, never_recomputed=dead)
    if recorder.input_writes:
        report = dataclasses.replace(report, input_writes=tuple(recorder.input_writes))
    if recorder.own_checkpoints:
        report = dataclasses.replace(report, own_checkpoints=tuple(recorder.own_checkpoints))
    return dataclasses.replace(report, defaults=dict(defaults or {})) if defaults else report


def _trainable_ids(recorder: Recorder, trainable: Collection[nn.Parameter] | None) -> set[int]:
    """The ids of the parameters DDP registers: ``trainable``, or those requiring grad now."""
    if trainable is not None:
        return {id(p) for p in trainable}
    return {id(p) for p in recorder.tree.params if p.requires_grad}


def _split(
    recorder: Recorder,
    passes: Mapping[nn.Parameter, int],
    trainable: Collection[nn.Parameter] | None,
) -> dict[str, int]:
    """Trainable parameters whose gradient arrives in several backward passes, named."""
    tree = recorder.tree
    able = _trainable_ids(recorder, trainable)
    counts = {id(p): n for p, n in passes.items()}
    return {
        tree.param_names[id(p)][0]: counts[id(p)]
        for p in tree.params
        if id(p) in able and counts.get(id(p), 0) > 1
    }


def _named(
    recorder: Recorder, params: Collection[nn.Parameter], trainable: Collection[nn.Parameter] | None
) -> tuple[str, ...]:
    """The trainable ones of ``params``, named, in ``parameters()`` order."""
    able, given = _trainable_ids(recorder, trainable), {id(p) for p in params}
    tree = recorder.tree
    return tuple(
        tree.param_names[id(p)][0] for p in tree.params if id(p) in given and id(p) in able
    )


def _output_reach(
    recorder: Recorder,
    outputs: Sequence[tuple[str, Collection[nn.Parameter]]],
    trainable: Collection[nn.Parameter] | None,
) -> OutputReach | None:
    """Which outputs reach which trainable parameters, named; None below two such outputs."""
    tree = recorder.tree
    able = _trainable_ids(recorder, trainable)
    reached = [(path, {id(p) for p in params if id(p) in able}) for path, params in outputs]
    reached = [(path, ids) for path, ids in reached if ids]
    if len(reached) < 2:
        return None
    main = max(reached, key=lambda item: len(item[1]))[0]  # the first of those that tie
    live = set().union(*(ids for _, ids in reached))
    missed = [(path, live - ids) for path, ids in reached]
    misses = {
        path: tuple(tree.param_names[id(p)][0] for p in tree.params if id(p) in ids)
        for path, ids in missed
        if ids
    }
    return OutputReach(tuple(path for path, _ in reached), main, misses)


def _build(
    recorder: Recorder,
    target: str,
    mode: Mode,
    concrete_args: Mapping[str, Any] | None,
    live: Collection[nn.Parameter] | None,
    backward: Sequence[nn.Parameter] | None,
    inputs: Mapping[str, str] | None,
    trainable: Collection[nn.Parameter] | None,
    compiled: bool = False,
    ddp_params: Sequence[nn.Parameter] | None = None,
) -> Report:
    tree = recorder.tree
    module_names, param_names = tree.module_names, tree.param_names
    live_ids = None if live is None else {id(p) for p in live}
    observed = recorder.observed
    order, first_call = _uses_proven(recorder, live_ids or set())
    param_name = {key: names[0] for key, names in param_names.items()}
    new_call, new_group = ModuleCall, ParamGroup

    # Per module, named once: its name, aliases, type, and the group its
    # call adds to its parent.
    named: dict[int, tuple[str, tuple[str, ...], str]] = {}
    whole_groups: dict[int, ParamGroup] = {}
    call_counts: dict[int, int] = {}
    calls: list[ModuleCall] = []
    for index, record in enumerate(recorder.calls):
        module = record.module
        key = id(module)
        about = named.get(key)
        if about is None:
            names = module_names[key]
            about = named[key] = (names[0], tuple(names[1:]), class_name(module))
        repeat = call_counts.get(key, 0)
        call_counts[key] = repeat + 1
        uses = []
        for group_module, params, whole_module in record.groups:
            group = whole_groups.get(id(group_module)) if whole_module else None
            if group is None:
                group = new_group(
                    module_names[id(group_module)][0],
                    tuple([param_name[id(p)] for p in params]),
                )
                if whole_module:
                    whole_groups[id(group_module)] = group
            uses.append(group)
        name, aliases, kind = about
        calls.append(
            new_call(index, name, kind, record.depth, record.parent, repeat, aliases, tuple(uses))
        )

    new_info = ParamInfo
    position = {id(p): i for i, p in enumerate(tree.params)}
    trains = (
        {id(p) for p in tree.params if p.requires_grad}
        if trainable is None
        else {id(p) for p in trainable}
    )
    # DDP numbers the parameters that require grad, in parameters() order (but those it ignores).
    registered = tree.params if ddp_params is None else ddp_params
    ddp_position = {id(p): i for i, p in enumerate(p for p in registered if id(p) in trains)}
    ddp_ignored = tuple(
        param_name[id(p)] for p in tree.params if id(p) in trains and id(p) not in ddp_position
    )
    counts = dict.fromkeys(("numel", "dead", "frozen", "assumed", "no_grad", "resting"), 0)
    # Without a real backward, a custom Function's is not seen: what its forward read
    # without being passed it, and no other use gives a gradient, rests on that.
    reached = live_ids if live_ids is not None and backward is None else None
    assumptions, resting = _assumptions(
        recorder, calls, lambda p: reached is not None and id(p) in trains and id(p) not in reached
    )
    if compiled and live_ids is not None:
        # Dead in eager's graph of compiled code: the compiled graph may hold it as an input.
        held = [p for p in order if id(p) in trains and id(p) not in live_ids]
        resting.update(map(id, held))
        at = Counter(first_call[id(p)] for p in held)
        assumptions += tuple(
            Assumption("torch.compile", calls[i].name, i, "", n, AssumptionKind.COMPILED)
            for i, n in sorted(at.items())
        )

    def info(param: nn.Parameter, first: int | None) -> ParamInfo:
        key = id(param)
        names = param_names[key]
        requires_grad = key in trains
        numel = param.numel()
        used = first is not None
        assumed = used and key not in observed
        dead = used and requires_grad and live_ids is not None and key not in live_ids
        counts["numel"] += numel
        counts["dead"] += dead
        counts["frozen"] += not requires_grad
        counts["assumed"] += assumed
        counts["no_grad"] += requires_grad and (dead or not used)
        rests = key in resting
        counts["resting"] += rests
        return new_info(
            names[0],
            tuple(names[1:]),
            position[key],
            tuple(param.shape),
            str(param.dtype).removeprefix("torch."),
            numel,
            requires_grad,
            None if first is None else calls[first].name,
            first,
            assumed,
            dead,
            ddp_position.get(key),
            rests,
        )

    used = tuple([info(p, first_call[id(p)]) for p in order])
    numel_used = counts["numel"]
    unused = tuple([info(p, None) for p in tree.params if id(p) not in first_call])
    external = tuple(
        ExternalUse(
            param=param_name[id(param)],
            owner=param_name[id(param)].rpartition(".")[0],
            used_by=calls[index].name,
            call=index,
        )
        for param, index in external_uses(recorder.calls, tree.owners)
    )
    summary = Summary(
        calls=len(calls),
        modules=len(call_counts),
        params_total=len(used) + len(unused),
        params_used=len(used),
        numel_total=counts["numel"],
        numel_used=numel_used,
        params_dead=counts["dead"],
        params_frozen=counts["frozen"],
        params_assumed=counts["assumed"],
        params_no_grad=counts["no_grad"],
        external_uses=len(external),
        params_on_assumption=counts["resting"],
    )
    return Report(
        target=target,
        mode=mode,
        concrete_args=dict(concrete_args or {}),
        modules=tuple(calls),
        params=used,
        unused=unused,
        summary=summary,
        external=external,
        backward=None if backward is None else tuple([param_name[id(p)] for p in backward]),
        inputs=dict(inputs or {}),
        assumptions=assumptions,
        ddp_ignored=ddp_ignored,
    )


def _uses_proven(
    recorder: Recorder, live_ids: Collection[int]
) -> tuple[list[nn.Parameter], dict[int, int]]:
    """The parameters in first-use order, and the call that first used each: those the
    recorder saw, and those a gradient reaches that it did not see read (TorchScript reads
    them in C++), each at the first call of the innermost module holding it that ran (their
    use, not its place in that call, is known: they are marked assumed, never observed)."""
    order, first_call = list(recorder.param_order), dict(recorder.first_call)
    tree = recorder.tree
    unseen = [p for p in tree.params if id(p) in live_ids and id(p) not in first_call]
    if not unseen:
        return order, first_call
    ran: dict[str, int] = {}  # module name -> its first call
    for index, call in enumerate(recorder.calls):
        for name in tree.module_names[id(call.module)]:
            ran.setdefault(name, index)
    for param in unseen:
        index = min(_innermost_ran(name, ran) for name in tree.param_names[id(param)])[1]
        at = next((i for i, p in enumerate(order) if first_call[id(p)] > index), len(order))
        order.insert(at, param)
        first_call[id(param)] = index
    return order, first_call


def _innermost_ran(name: str, ran: Mapping[str, int]) -> tuple[int, int]:
    """Of the modules holding parameter ``name``, the innermost that ran: ``(-depth, its
    first call)``; the root's call when none did."""
    module = name.rpartition(".")[0]
    while module and module not in ran:
        module = module.rpartition(".")[0]
    return (-(module.count(".") + 1) if module else 0), ran.get(module, 0)


def _assumptions(
    recorder: Recorder, calls: Sequence[ModuleCall], unreached: Callable[[nn.Parameter], bool]
) -> tuple[tuple[Assumption, ...], set[int]]:
    """The assumptions, one per call, op and place; the ids of the parameters resting on them.

    A parameter rests on a selection's assumption, or a choice from a random
    draw, when it belongs to the module whose call made it (whether that call
    then used it or not), or was used inside that call after it; on a custom Function's unseen
    backward when its forward read it unpassed and it is ``unreached``
    (trainable, and given no gradient by the walk).
    """
    found: dict[tuple[int, str, str, AssumptionKind, bool], int] = {}
    resting = set(recorder.after_assumption)
    for index, event in recorder.assumptions:
        key = (index, event.op, event.where, event.kind, event.own_generator)
        if key not in found:
            resting.update(map(id, recorder.params_of(recorder.calls[index].module)))
        found[key] = found.get(key, 0) + 1
    for index, unseen in recorder.unseen_backwards:
        hidden = [id(p) for p in unseen.params if unreached(p)]
        if hidden:
            resting.update(hidden)
            op = f"{unseen.function}.backward"
            key = (index, op, unseen.where, AssumptionKind.BACKWARD, False)
            found[key] = found.get(key, 0) + 1
    made = tuple(
        Assumption(op, calls[index].name, index, where, count, kind, own)
        for (index, op, where, kind, own), count in found.items()
    )
    return made, resting


def external_uses(
    calls: Sequence[CallRecord], owners: Mapping[int, set[int]]
) -> list[tuple[nn.Parameter, int]]:
    """Direct uses of a parameter while none of its owning modules is running.

    Args:
        calls: The recorded calls.
        owners: By ``id(parameter)``, the ids of the modules that hold it.

    Returns:
        ``(parameter, call index)`` for each such use, once per call.
    """
    found: dict[tuple[int, int], tuple[nn.Parameter, int]] = {}
    for index, call in enumerate(calls):
        for group in call.groups:
            if group.whole_module:
                continue
            for param in group.params:
                key = (id(param), index)
                if key not in found and not _on_stack(calls, index, owners[id(param)]):
                    found[key] = (param, index)
    return list(found.values())


def _on_stack(calls: Sequence[CallRecord], index: int | None, modules: set[int]) -> bool:
    """Whether any of ``modules`` (ids) runs call ``index`` or one enclosing it."""
    while index is not None:
        call = calls[index]
        if id(call.module) in modules:
            return True
        index = call.parent
    return False
