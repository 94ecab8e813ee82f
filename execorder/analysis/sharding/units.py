"""Choosing a plan's units, and seeing a report through them: who holds what, who runs when."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from execorder.analysis.sharding.kinds import LayoutChoice, ReshardPolicy, UnitChoice
from execorder.analysis.sharding.records import DecoderParts, Gathers, Layout, Unit, UnitRule
from execorder.errors import LayoutError, LayoutUnitsError, UnitError
from execorder.report import Report
from execorder.spelling import ROOT

# Bytes per element of each torch dtype, by the name reports give it; no torch here.
DTYPE_BYTES = {
    "bool": 1,
    "uint8": 1,
    "int8": 1,
    "quint8": 1,
    "qint8": 1,
    "quint4x2": 1,
    "quint2x4": 1,
    "float8_e4m3fn": 1,
    "float8_e4m3fnuz": 1,
    "float8_e5m2": 1,
    "float8_e5m2fnuz": 1,
    "float8_e8m0fnu": 1,
    "float4_e2m1fn_x2": 1,
    "bits8": 1,
    "int16": 2,
    "uint16": 2,
    "float16": 2,
    "bfloat16": 2,
    "bits16": 2,
    "int32": 4,
    "uint32": 4,
    "qint32": 4,
    "float32": 4,
    "complex32": 4,
    "bits1x8": 1,
    "bits2x4": 1,
    "bits4x2": 1,
    "int64": 8,
    "uint64": 8,
    "float64": 8,
    "complex64": 8,
    "complex128": 16,
    # Sub-byte placeholders: torch gives each an itemsize of 1.
    **{f"{kind}{bits}": 1 for kind in ("int", "uint") for bits in range(1, 8)},
}


UnitSpec = tuple[str, ...]
"""The modules one ``fully_shard`` call shards: one, or a group's (``fully_shard([a, b])``)."""

GROUP = "+"  # joins a group's module names in a unit's name and in ``units``


def check_choice(units: Sequence[str], choice: LayoutChoice) -> None:
    """Units are named, or a layout chooses them: not both.

    Raises:
        LayoutUnitsError: For units named beside a layout other than ``BLOCKS``
            (the default, which named units replace).
    """
    if units and choice is not LayoutChoice.BLOCKS:
        raise LayoutUnitsError(choice.value)


def choose_units(
    layout: Layout, wanted: Sequence[str] = (), choice: LayoutChoice = LayoutChoice.BLOCKS
) -> tuple[tuple[UnitSpec, ...], UnitRule]:
    """The units in registration order (the root first), each its modules, and the rule used.

    Args:
        layout: The model's modules.
        wanted: Class names or qualified names; every module matching one is
            a unit. Names joined by ``+`` (``norm+lm_head``) are one unit,
            a group, each name matching exactly one module; a class named
            alone leaves out the modules a group has. Empty: the layout's
            rule.
        choice: The layout when ``wanted`` is empty: ``BLOCKS`` takes
            the model's ``_no_split_modules`` where it has them,
            else the outermost repeated block class; ``TORCHTITAN`` takes
            torchtitan's decoder layout (the input embedding, each block,
            the final norm and the output head as one group, or all three
            as one group when the head's weight is tied to the embedding).

    Raises:
        UnitError: If a wanted name matches no module, a group's name does
            not match exactly one, or a module would be in two units.
        LayoutError: If the torchtitan layout is asked of a model that is
            not a decoder.
        LayoutUnitsError: If units are named beside the torchtitan layout.
    """
    check_choice(wanted, choice)
    modules = layout.modules[1:]  # the root is always a unit
    specs: list[UnitSpec]
    if wanted:
        # Groups first: a class named alone leaves out the modules a group has.
        groups = [spec for text in wanted if GROUP in text for spec in _given(layout, text)]
        grouped = {name for spec in groups for name in spec}
        by_class = {m.name for m in modules if any(m.type == text for text in wanted)}
        specs = groups + [
            spec
            for text in wanted
            if GROUP not in text
            for spec in _given(layout, text)
            if not (spec[0] in grouped and spec[0] in by_class)
        ]
        rule = UnitRule(UnitChoice.GIVEN, tuple(wanted))
    elif choice is LayoutChoice.ACCELERATE:
        specs, rule = _accelerate(layout)
    else:
        blocks, rule = _blocks(layout)
        specs = [(name,) for name in blocks]
        if choice is LayoutChoice.TORCHTITAN:
            specs = _torchtitan(layout, specs)
            kinds = {m.name: m.type for m in modules}
            kept = {kinds[name] for spec in specs for name in spec}
            vision = layout.decoder.vision if layout.decoder else None
            names = tuple(c for c in rule.names if c in kept)
            rule = UnitRule(UnitChoice.TORCHTITAN, names, vision=vision)
    owner: dict[str, str] = {}
    for spec in specs:
        for name in spec:
            if owner.setdefault(name, GROUP.join(spec)) != GROUP.join(spec):
                raise UnitError(
                    GROUP.join(spec),
                    problem=f"{name} is already in unit {owner[name]}: a module is in one unit",
                )
    position = {m.name: i for i, m in enumerate(modules)}
    unique = list(dict.fromkeys(specs))
    unique.sort(key=lambda spec: position[spec[0]])
    return ((ROOT,), *unique), rule


def _given(layout: Layout, text: str) -> list[UnitSpec]:
    """The units one ``wanted`` name gives: every module it matches, or one group."""
    modules = layout.modules[1:]
    parts = [part.strip() for part in text.split(GROUP)]
    found = [[m.name for m in modules if part in (m.type, m.name, *m.aliases)] for part in parts]
    if len(parts) == 1:
        if not found[0] and text != ROOT:
            raise UnitError(text, classes=_block_classes(layout))
        return [(name,) for name in found[0]]
    for part, names in zip(parts, found, strict=True):
        if not names:
            raise UnitError(
                text,
                problem=f"{part or 'an empty name'}: no module of the model has that "
                "class or qualified name",
            )
        if len(names) > 1:
            raise UnitError(
                text,
                problem=f"{part} matches {len(names)} modules ({', '.join(names[:3])}"
                f"{', ...' if len(names) > 3 else ''}); a group names each of its modules once",
            )
    return [tuple(dict.fromkeys(names[0] for names in found))]


def _blocks(layout: Layout) -> tuple[list[str], UnitRule]:
    """The block modules of the default rule, and the rule."""
    modules = layout.modules[1:]
    for classes, rule in (
        (layout.no_split, UnitRule(UnitChoice.NO_SPLIT, source=layout.no_split_from)),
        (layout.repeated, UnitRule(UnitChoice.REPEATED)),
    ):
        names = [m.name for m in modules if m.type in classes]
        if names:
            used = [c for c in classes if any(m.type == c for m in modules)]
            return names, dataclasses.replace(rule, names=tuple(used))
    return [], UnitRule(UnitChoice.ROOT_ALONE)


def _torchtitan(layout: Layout, blocks: list[UnitSpec]) -> list[UnitSpec]:
    """torchtitan's ``apply_fsdp_to_decoder`` units: embedding, blocks, [norm, head]; and a
    VLM's vision encoder as one unit, as ``apply_fsdp_to_vision_encoder`` shards it."""
    parts = layout.decoder or DecoderParts()
    vision: list[UnitSpec] = []
    if parts.vision:
        inside = f"{parts.vision}."
        blocks = [spec for spec in blocks if not spec[0].startswith(inside)]
        vision = [(parts.vision,)]
    missing = [
        what
        for what, found in (
            ("repeated blocks", blocks),
            ("input embedding", parts.embedding),
            ("output head", parts.head),
        )
        if not found
    ]
    if missing:
        raise LayoutError(LayoutChoice.TORCHTITAN.value, missing)
    edges: list[UnitSpec]
    if parts.tied:
        edges = [tuple(n for n in (parts.embedding, parts.norm, parts.head) if n)]
    else:
        edges = [(parts.embedding,)] if parts.embedding else []
        if parts.norm and parts.head:
            edges.append((parts.norm, parts.head))
    return [*edges, *blocks, *vision]


def _accelerate(layout: Layout) -> tuple[list[UnitSpec], UnitRule]:
    """accelerate's ``fsdp2_prepare_model`` with ``transformer_based_wrap``: every module of a
    ``_no_split_modules`` class (none without them), the input embedding (untied), then the
    final norm (the base model's last direct child named Norm) with the output head as one
    group, the embedding with them when tied; modules already units stay out of the group."""
    modules = layout.modules[1:]
    classes = [c for c in layout.no_split if any(m.type == c for m in modules)]
    blocks = [m.name for m in modules if m.type in classes]
    parts = layout.decoder or DecoderParts()
    taken = set(blocks)
    specs: list[UnitSpec] = [(name,) for name in blocks]
    if not parts.tied and parts.embedding and parts.embedding not in taken:
        specs.append((parts.embedding,))
        taken.add(parts.embedding)
    tail = (parts.base_norm, parts.embedding if parts.tied else None, parts.head)
    group = tuple(dict.fromkeys(n for n in tail if n and n not in taken))
    if group:
        specs.append(group)
    return specs, UnitRule(UnitChoice.ACCELERATE, tuple(classes))


def expert_shard_dims(
    layout: Layout, choice: LayoutChoice, params: Sequence[str], world_size: int
) -> dict[str, int]:
    """The parameters torchtitan's layout shards on dim 1: a mixture of experts' weights,
    where there are more ranks than experts (``apply_fsdp_to_decoder``'s
    ``Shard(1)``, which saves padding dim 0 up to the ranks)."""
    if choice is not LayoutChoice.TORCHTITAN or layout.decoder is None:
        return {}
    wide = [module for module, count in layout.decoder.experts if world_size > count]
    return {p: 1 for p in params if any(p.startswith(f"{module}.") for module in wide)}


def _block_classes(layout: Layout) -> tuple[str, ...]:
    return tuple(dict.fromkeys((*layout.no_split, *layout.repeated)))


def reshard_flags(
    policy: ReshardPolicy,
    units: Sequence[UnitSpec],
    ended_last: str | None,
    choice: LayoutChoice,
    head: str | None = None,
) -> dict[str, bool]:
    """Each unit's ``reshard_after_forward`` under a policy.

    The root never reshards (FSDP2's own rule for the root: backward starts
    with it). ``ALWAYS`` reshards every other unit, ``NEVER`` none.
    ``DEFAULT`` is torchtitan's: under its layout, every unit but the
    ``[norm, head]`` group (or the tied group); under accelerate's, every unit
    but the one holding the output head (``head``), a group of one when no
    norm is found; under the blocks layout,
    every unit but the one whose forward ends last (``ended_last``), which
    backward needs first and FSDP2 would gather again at once.
    """
    flags = {}
    for spec in units:
        name = GROUP.join(spec)
        if name == ROOT or policy is ReshardPolicy.NEVER:
            flags[name] = False
        elif policy is ReshardPolicy.ALWAYS:
            flags[name] = True
        elif choice is LayoutChoice.TORCHTITAN:
            flags[name] = len(spec) == 1
        elif choice is LayoutChoice.ACCELERATE:
            flags[name] = head not in spec
        else:
            flags[name] = name != ended_last
    return flags


# -- the plan -------------------------------------------------------------------


class UnitModel:
    """A report's calls and parameters, seen through a choice of units.

    A group (``fully_shard([norm, lm_head])``) starts, as FSDP2 runs it,
    when the first of its modules runs, and ends when each of its modules
    has run (or, if one never runs, when forward ends); in between it is
    gathered, so it counts as running.
    """

    def __init__(self, report: Report, layout: Layout, units: Sequence[UnitSpec]) -> None:
        self.report = report
        by_name = {m.name: m for m in layout.modules}
        self.specs = {GROUP.join(spec): tuple(spec) for spec in units}
        self.units = tuple(self.specs)
        self.types = {
            u: GROUP.join(by_name[m].type if m in by_name else "" for m in spec)
            for u, spec in self.specs.items()
        }
        self.registration = {u: i for i, u in enumerate(self.units)}
        self.unit_by_alias: dict[str, str] = {}
        member_by_alias: dict[str, str] = {}
        for unit, spec in self.specs.items():
            for member in spec:
                module = by_name.get(member)
                for name in (member, *(module.aliases if module else ())):
                    self.unit_by_alias[name] = unit
                    member_by_alias[name] = member

        # Which units hold each parameter (one per name: tied names may differ).
        self.params = report.all_params()
        self.holders: dict[str, tuple[str, ...]] = {}
        for info in self.params:
            names = (info.name, *info.aliases)
            self.holders[info.name] = tuple(
                dict.fromkeys(self.unit_of(n.rpartition(".")[0]) for n in names)
            )

        # Each call: the unit it starts (if any) and the units running during it.
        calls = report.modules
        self.unit_at: list[str | None] = []  # the unit whose forward the call starts
        self.active: list[frozenset[str]] = []
        self.ended: list[tuple[str, frozenset[str]]] = []  # units in the order forward ends them
        pending: dict[str, set[str]] = {}  # a group in progress: its modules yet to run
        started: dict[str, int] = {}  # a group in progress: the call that started it
        stack: list[tuple[int, str | None, str | None]] = []  # open calls: index, unit, member

        def close(index: int, unit: str | None, member: str | None) -> None:
            if unit is None:
                return
            if len(self.specs[unit]) == 1:
                self.ended.append((unit, self.active[index] - {unit}))
                return
            waiting = pending.get(unit)
            if waiting is not None:
                waiting.discard(member or "")
                if not waiting:
                    del pending[unit]
                    self.ended.append((unit, self.active[started.pop(unit)] - {unit}))

        for index, call in enumerate(calls):
            while stack and calls[stack[-1][0]].depth >= call.depth:
                close(*stack.pop())
            matched = next((n for n in (call.name, *call.aliases) if n in self.unit_by_alias), None)
            own: str | None = self.unit_by_alias[matched] if matched is not None else None
            which = member_by_alias[matched] if matched is not None else None
            starts = own is not None
            if own is not None and len(self.specs[own]) > 1:
                starts = own not in pending
                if starts:
                    pending[own], started[own] = set(self.specs[own]), index
            outer = self.active[call.parent] if call.parent is not None else frozenset()
            running = outer | frozenset(pending) | ({own} if own is not None else set())
            self.unit_at.append(own if starts else None)
            self.active.append(frozenset(running))
            stack.append((index, own, which))
        while stack:
            close(*stack.pop())
        for unit in list(pending):  # a group one of whose modules never ran: ends with forward
            self.ended.append((unit, self.active[started.pop(unit)] - {unit}))

        self.first_call: dict[str, int] = {}
        self.calls: dict[str, int] = dict.fromkeys(self.units, 0)
        for index, own in enumerate(self.unit_at):
            if own is not None:
                self.first_call.setdefault(own, index)
                self.calls[own] += 1

    def unit_of(self, module: str) -> str:
        """The innermost unit holding the module of that qualified name."""
        name = module
        while True:
            if name in self.unit_by_alias:
                return self.unit_by_alias[name]
            if not name:
                return ROOT
            name = name.rpartition(".")[0]

    def outside_reads(self) -> dict[tuple[str, str], list[str]]:
        """Parameters a call read while the unit holding them was not running (FSDP2 gathers
        a unit's parameters for its own forward only: the call reads a shard), by that unit
        and the call's module, in the order read."""
        found: dict[tuple[str, str], list[str]] = {}
        for index, call in enumerate(self.report.modules):
            running = self.active[index]
            for group in call.uses:
                if group.module not in (call.name, *call.aliases):
                    continue  # a child's call: its own uses are checked at that call
                for param in group.params:
                    holders = self.holders[param]  # groups name parameters by their first name
                    if running.isdisjoint(holders):
                        params = found.setdefault((holders[0], call.name), [])
                        if param not in params:
                            params.append(param)
        return found

    def input_writers(self) -> dict[str, int]:
        """Units (the root aside) a call of which wrote into a list, dict or dataclass it was
        passed holding a tensor that needs grad (``Report.input_writes``), with how many."""
        units: dict[str, int] = {}
        for index in self.report.input_writes:
            call = self.report.modules[index]
            names = (call.name, *call.aliases)
            unit = next((self.unit_by_alias[n] for n in names if n in self.unit_by_alias), ROOT)
            if unit != ROOT:
                units[unit] = units.get(unit, 0) + 1
        return units

    def ran(self) -> list[str]:
        """Units that ran, in the order their forwards first started."""
        return sorted(self.first_call, key=self.first_call.__getitem__)

    def forward_sequence(self) -> list[tuple[str, frozenset[str]]]:
        """Every start of a unit's forward, in order, with the units already running then."""
        return [
            (unit, self.active[index] - {unit})
            for index, unit in enumerate(self.unit_at)
            if unit is not None
        ]

    def backward_sequence(self) -> tuple[list[tuple[str, frozenset[str]]], bool]:
        """Every start of a unit's backward, in order, and whether a real backward said so.

        Backward runs the calls in reverse post-forward order (what FSDP2's
        own backward prefetch follows). A recorded backward orders the units
        when each ran once: a unit's backward starts before that of any unit
        inside it, so it is placed by the first gradient of anything under
        it; units without a recorded gradient (frozen ones still pass
        gradients on) keep their reverse post-forward place.
        """
        reverse = self.ended[::-1]
        order = self.report.backward
        if not order or any(count > 1 for count in self.calls.values()):
            return reverse, False
        position = {name: i for i, name in enumerate(order)}
        first_grad: dict[str, int] = {}
        for info in self.params:
            grad = position.get(info.name)
            if grad is None:
                continue
            for name in (info.name, *info.aliases):
                for unit in self._enclosing(name.rpartition(".")[0]):
                    first_grad[unit] = min(first_grad.get(unit, grad), grad)
        graded = iter(
            sorted(
                (step for step in reverse if step[0] in first_grad),
                key=lambda step: (first_grad[step[0]], len(step[1])),
            )
        )
        return [next(graded) if u in first_grad else (u, r) for u, r in reverse], True

    def _enclosing(self, module: str) -> list[str]:
        """Every unit holding the module, innermost first, the root last."""
        found = []
        name = module
        while True:
            if name in self.unit_by_alias:
                found.append(self.unit_by_alias[name])
            if not name:
                break
            name = name.rpartition(".")[0]
        if ROOT not in found:
            found.append(ROOT)
        return found


def build_units(
    model: UnitModel,
    reshard: Mapping[str, bool],
    *,
    world_size: int = 1,
    param_dtype: str | None = None,
    shard_dims: Mapping[str, int] | None = None,
) -> list[Unit]:
    """Each unit's record: its parameters (those no nested unit holds), bytes, calls, gathers.

    A parameter is sharded on dim 0 but where ``shard_dims`` names another.
    """
    dims = shard_dims or {}
    held: dict[str, list[Any]] = {u: [] for u in model.units}
    for info in model.params:
        held[model.holders[info.name][0]].append(info)
    built = []
    for name in model.units:
        infos = held[name]
        by_dtype: dict[str, int] = {}
        gather = shard = 0
        for info in infos:
            size = _dtype_bytes(info.dtype, info.name)
            by_dtype[info.dtype] = by_dtype.get(info.dtype, 0) + info.numel * size
            dim = dims.get(info.name, 0)
            rows = padded_rows(info.shape[dim:], world_size)
            per_row = info.numel // info.shape[dim] if info.shape and info.shape[dim] else 1
            gathered = param_dtype if param_dtype and is_floating(info.dtype) else info.dtype
            gather += rows * world_size * per_row * _dtype_bytes(gathered, info.name)
            shard += rows * per_row * size
        calls, reshards = model.calls[name], reshard.get(name, True)
        ran = calls > 0
        built.append(
            Unit(
                name=name,
                type=model.types[name],
                params=len(infos),
                numel=sum(i.numel for i in infos),
                bytes=sum(by_dtype.values()),
                bytes_by_dtype=by_dtype,
                first_call=model.first_call.get(name),
                calls=calls,
                param_names=tuple(i.name for i in infos),
                modules=model.specs[name],
                reshard_after_forward=reshards,
                gather_bytes=gather,
                shard_bytes=shard,
                gathers=Gathers(
                    forward=(calls if reshards else 1) if ran and infos else 0,
                    backward=(calls if reshards else calls - 1) if ran and infos else 0,
                ),
            )
        )
    return built


def padded_rows(shape: Sequence[int], world_size: int) -> int:
    """The rows of dim 0 each rank holds of a parameter: FSDP2 pads dim 0 to a multiple of them.

    FSDP2 splits dim 0 as ``torch.chunk`` does (``ceil(rows / world_size)`` a
    chunk) and pads every rank's shard to the first chunk's size; a 0-dim
    parameter counts as one row. (For a parameter sharded on dim ``d``, give
    ``shape[d:]``: the same holds of that dim.)
    """
    rows = shape[0] if shape else 1
    return -(-rows // world_size)


def is_floating(dtype: str) -> bool:
    """Whether FSDP2's ``param_dtype`` casts a parameter of this dtype (floating point only)."""
    return dtype.startswith(("float", "bfloat"))


def _dtype_bytes(dtype: str, name: str) -> int:
    size = DTYPE_BYTES.get(dtype)
    if size is None:
        raise ValueError(f"unknown dtype {dtype!r} of parameter {name}")
    return size


def untied(model: UnitModel, layout: Layout, rule: UnitRule) -> tuple[UnitModel, UnitRule]:
    """The layout's blocks, less those FSDP2 cannot shard alone.

    FSDP2 refuses a parameter in two units (at the first forward): a block
    whose embedding is tied to the head the root holds (BERT's, RoBERTa's),
    or blocks that share a layer's weight. And it gathers a unit's
    parameters for that unit's forward only: a block whose parameters
    another call reads while the block is not running (DiT's root embeds the
    label with its first block's embedder, after the blocks) reads a shard.
    And it passes a unit a copy of a list, dict or dataclass argument holding
    a tensor that needs grad: a block that writes into one (the Wan VAE's
    causal convolutions fill a cache list) writes into the copy, and its
    caller computes otherwise. Under a rule of the blocks layout, such a
    block is left to the unit around it, as Composer's FSDP2 wrapping leaves
    modules with tied parameters, and the rule names it; units a caller
    names stay as named (the ``shared-params``, ``external-use`` and
    ``input-write`` checks say what FSDP2 will do with them).
    """
    if rule.choice not in (UnitChoice.NO_SPLIT, UnitChoice.REPEATED):
        return model, rule
    left: list[str] = []
    read: list[str] = []
    writing: list[str] = []
    while True:
        tied = {u for h in model.holders.values() if len(h) > 1 for u in h if u != ROOT}
        outside = {unit for unit, _ in model.outside_reads() if unit != ROOT} - tied
        writes = set(model.input_writers()) - tied - outside
        if not tied and not outside and not writes:
            break
        left += [u for u in model.units if u in tied | outside | writes]
        read += [u for u in model.units if u in outside]
        writing += [u for u in model.units if u in writes]
        kept = [spec for unit, spec in model.specs.items() if unit not in tied | outside | writes]
        model = UnitModel(model.report, layout, kept)
    if not left:
        return model, rule
    return model, dataclasses.replace(
        rule, left_out=tuple(left), read_outside=tuple(read), writes_inputs=tuple(writing)
    )
