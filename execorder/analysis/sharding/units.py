"""Choosing a plan's units, and seeing a report through them: who holds what, who runs when."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from execorder.analysis.sharding.kinds import UnitChoice
from execorder.analysis.sharding.records import Layout, Unit, UnitRule
from execorder.errors import UnitError
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


def choose_units(layout: Layout, wanted: Sequence[str] = ()) -> tuple[tuple[str, ...], UnitRule]:
    """The units' qualified names in registration order (the root first), and the rule used.

    Args:
        layout: The model's modules.
        wanted: Class names or qualified names; every module matching one is
            a unit. Empty: transformers' ``_no_split_modules`` where the model
            has them, else the outermost repeated block class.

    Raises:
        UnitError: If a wanted name matches no module.
    """
    modules = layout.modules[1:]  # the root is always a unit
    if wanted:
        chosen = []
        for name in wanted:
            found = [m.name for m in modules if name in (m.type, m.name, *m.aliases)]
            if not found and name != ROOT:
                raise UnitError(name, classes=_block_classes(layout))
            chosen.extend(found)
        names = set(chosen)
        rule = UnitRule(UnitChoice.GIVEN, tuple(wanted))
    else:
        names, rule = set(), UnitRule(UnitChoice.ROOT_ALONE)
        for classes, choice in (
            (layout.no_split, UnitChoice.NO_SPLIT),
            (layout.repeated, UnitChoice.REPEATED),
        ):
            names = {m.name for m in modules if m.type in classes}
            if names:
                used = [c for c in classes if any(m.type == c for m in modules)]
                rule = UnitRule(choice, tuple(used))
                break
    return (ROOT, *(m.name for m in modules if m.name in names)), rule


def _block_classes(layout: Layout) -> tuple[str, ...]:
    return tuple(dict.fromkeys((*layout.no_split, *layout.repeated)))


# -- the plan -------------------------------------------------------------------


class UnitModel:
    """A report's calls and parameters, seen through a choice of units."""

    def __init__(self, report: Report, layout: Layout, unit_names: Sequence[str]) -> None:
        self.report = report
        by_name = {m.name: m for m in layout.modules}
        self.units = tuple(unit_names)
        self.types = {u: by_name[u].type if u in by_name else "" for u in self.units}
        self.registration = {u: i for i, u in enumerate(self.units)}
        self.unit_by_alias: dict[str, str] = {}
        for unit in self.units:
            module = by_name.get(unit)
            for name in (unit, *(module.aliases if module else ())):
                self.unit_by_alias[name] = unit

        # Which units hold each parameter (one per name: tied names may differ).
        self.params = report.all_params()
        self.holders: dict[str, tuple[str, ...]] = {}
        for info in self.params:
            names = (info.name, *info.aliases)
            self.holders[info.name] = tuple(
                dict.fromkeys(self.unit_of(n.rpartition(".")[0]) for n in names)
            )

        # The units running at each call: the call's own unit and its enclosing ones.
        calls = report.modules
        self.unit_at: list[str | None] = []
        self.active: list[frozenset[str]] = []
        for call in calls:
            own = next(
                (
                    self.unit_by_alias[n]
                    for n in (call.name, *call.aliases)
                    if n in self.unit_by_alias
                ),
                None,
            )
            outer = self.active[call.parent] if call.parent is not None else frozenset()
            self.unit_at.append(own)
            self.active.append(outer | {own} if own is not None else outer)
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
        ended: list[tuple[str, frozenset[str]]] = []
        stack: list[int] = []
        for index, call in enumerate(self.report.modules):
            while stack and self.report.modules[stack[-1]].depth >= call.depth:
                self._ended(stack.pop(), ended)
            stack.append(index)
        while stack:
            self._ended(stack.pop(), ended)
        reverse = ended[::-1]
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

    def _ended(self, index: int, ended: list[tuple[str, frozenset[str]]]) -> None:
        unit = self.unit_at[index]
        if unit is not None:
            ended.append((unit, self.active[index] - {unit}))

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


def build_units(model: UnitModel) -> list[Unit]:
    """Each unit's record: its parameters (those no nested unit holds), bytes and calls."""
    held: dict[str, list[Any]] = {u: [] for u in model.units}
    for info in model.params:
        held[model.holders[info.name][0]].append(info)
    built = []
    for name in model.units:
        infos = held[name]
        by_dtype: dict[str, int] = {}
        for info in infos:
            size = DTYPE_BYTES.get(info.dtype)
            if size is None:
                raise ValueError(f"unknown dtype {info.dtype!r} of parameter {info.name}")
            by_dtype[info.dtype] = by_dtype.get(info.dtype, 0) + info.numel * size
        built.append(
            Unit(
                name=name,
                type=model.types[name],
                params=len(infos),
                numel=sum(i.numel for i in infos),
                bytes=sum(by_dtype.values()),
                bytes_by_dtype=by_dtype,
                first_call=model.first_call.get(name),
                calls=model.calls[name],
                param_names=tuple(i.name for i in infos),
            )
        )
    return built
