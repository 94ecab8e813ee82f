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
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from execorder.errors import SchemaError, UnitError
from execorder.report import (
    ROOT,
    SCHEMA_VERSION,
    Report,
    Severity,
    Word,
    jsonable,
    label,
    size_text,
)
from execorder.report.reading import Fields

SEVERITY_RANK = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}


class CheckKind(Word):
    """What a plan's check found."""

    EXTERNAL_USE = "external-use"  # a unit's parameters read outside that unit's forward
    SHARED = "shared-params"  # one parameter in two units
    VARIES = "varies"  # a unit runs for some concrete values only (a sweep's)
    NOT_RUN = "not-run"  # a unit never runs in forward
    REGISTRATION_ORDER = "registration-order"  # a registration-order prefetch mistargets
    ORDER_VARIES = "order-varies"  # units run in another order for some values (a sweep's)
    ASSUMPTION = "assumption"  # the order rests on what a meta run assumed
    REPEATED = "repeated"  # a unit runs more than once: re-gathered each time
    ROOT_ONLY = "root-only"  # no unit but the root: the whole model is gathered at once


SEVERITY = {
    CheckKind.EXTERNAL_USE: Severity.ERROR,
    CheckKind.SHARED: Severity.ERROR,
    CheckKind.VARIES: Severity.ERROR,
    CheckKind.NOT_RUN: Severity.WARNING,
    CheckKind.REGISTRATION_ORDER: Severity.WARNING,
    CheckKind.ORDER_VARIES: Severity.WARNING,
    CheckKind.ASSUMPTION: Severity.WARNING,
    CheckKind.REPEATED: Severity.INFO,
    CheckKind.ROOT_ONLY: Severity.INFO,
}

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


@dataclass(frozen=True, slots=True)
class LayoutModule:
    """One module of a model, called or not.

    Attributes:
        name: Its first qualified name (``""`` for the root).
        type: Its class name.
        aliases: Its other qualified names.
    """

    name: str
    type: str
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Layout:
    """A model's modules as FSDP sees them, in registration (``named_modules()``) order.

    Attributes:
        modules: Every module, the root first.
        repeated: Classes of the outermost repeated blocks: the items of a
            ``ModuleList``, ``Sequential`` or ``ModuleDict`` holding two or more
            modules of one class with parameters (Llama's decoder layers).
        no_split: transformers' ``_no_split_modules`` of the model, when it
            has them (the classes its own FSDP wrapping keeps whole).
    """

    modules: tuple[LayoutModule, ...]
    repeated: tuple[str, ...] = ()
    no_split: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Unit:
    """One ``fully_shard`` unit: a module, and the parameters it gathers.

    Attributes:
        name: The module's qualified name (``""`` for the root).
        type: Its class name.
        params: How many parameters it gathers: those under it that no
            unit nested inside it holds.
        numel: Their elements.
        bytes: Their bytes, all-gathered on every unshard.
        bytes_by_dtype: The same, by dtype.
        first_call: Index of its first call in the module order; None when
            it never runs in forward.
        calls: How many times forward calls it.
        param_names: The parameters, in ``named_parameters()`` order.
    """

    name: str
    type: str
    params: int
    numel: int
    bytes: int
    bytes_by_dtype: Mapping[str, int]
    first_call: int | None
    calls: int
    param_names: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "bytes_by_dtype", MappingProxyType(dict(self.bytes_by_dtype)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "params": self.params,
            "numel": self.numel,
            "bytes": self.bytes,
            "bytes_by_dtype": dict(self.bytes_by_dtype),
            "first_call": self.first_call,
            "calls": self.calls,
            "param_names": list(self.param_names),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "unit") -> Unit:
        """Read one back from :meth:`to_dict` output; a wrong field is a ``SchemaError``."""
        fields = Fields(data, where)
        by_dtype = fields.get("bytes_by_dtype", dict, default={})
        return cls(
            name=fields.get("name", str),
            type=fields.get("type", str),
            params=fields.get("params", int),
            numel=fields.get("numel", int, default=0),
            bytes=fields.get("bytes", int),
            bytes_by_dtype={str(k): int(v) for k, v in by_dtype.items()},
            first_call=fields.get("first_call", int, type(None)),
            calls=fields.get("calls", int, default=0),
            param_names=tuple(fields.items("param_names", str, default=())),
        )


@dataclass(frozen=True, slots=True)
class Check:
    """One thing a plan found that breaks FSDP2 or costs it.

    Attributes:
        kind: What was found.
        severity: How bad it is.
        units: The units involved (for a prefetch, the one that prefetches first).
        params: The parameters involved.
        message: One or two sentences for a person.
    """

    kind: CheckKind
    severity: Severity
    units: tuple[str, ...]
    params: tuple[str, ...]
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "severity": self.severity.value,
            "units": list(self.units),
            "params": list(self.params),
            "message": self.message,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "check") -> Check:
        """Read one back from :meth:`to_dict` output; a wrong field is a ``SchemaError``."""
        fields = Fields(data, where)
        try:
            kind, severity = (
                CheckKind(fields.get("kind", str)),
                Severity(fields.get("severity", str)),
            )
        except ValueError as exc:
            raise SchemaError(f"{where}: {exc}") from None
        return cls(
            kind=kind,
            severity=severity,
            units=tuple(fields.items("units", str)),
            params=tuple(fields.items("params", str)),
            message=fields.get("message", str),
        )


@dataclass(frozen=True, slots=True)
class FsdpPlan:
    """Units, prefetch lists and checks for FSDP2, from the order forward really ran.

    Attributes:
        target: What was traced.
        units: The units in forward order (by first call), the root first;
            units that never run come last, in registration order.
        forward_prefetch: For each unit that runs, the units it prefetches in
            forward: the next ``prefetch`` units to start after its first call
            starts (for ``set_modules_to_forward_prefetch``).
        backward_prefetch: For each unit that runs, the units it prefetches
            in backward: the next ``prefetch`` in the order their gradients
            are needed (for ``set_modules_to_backward_prefetch``).
        checks: What breaks FSDP2 or costs it, most severe first.
        prefetch: How many units each list names, at most.
        unit_rule: How the units were chosen, for a person.
        backward_from: ``"recorded backward"`` when a real backward gave
            the backward order, else ``"reverse post-forward order"``.
        mode: The report's mode.
        concrete_args: The concrete arguments of the run the plan follows.
        seed: The run's seed.
        combinations: With a sweep, the concrete arguments of every run checked,
            the one the plan follows first.
    """

    target: str
    units: tuple[Unit, ...]
    forward_prefetch: Mapping[str, tuple[str, ...]]
    backward_prefetch: Mapping[str, tuple[str, ...]]
    checks: tuple[Check, ...]
    prefetch: int = 1
    unit_rule: str = ""
    backward_from: str = "reverse post-forward order"
    mode: str = "eager"
    concrete_args: Mapping[str, Any] = field(default_factory=dict)
    seed: int | None = None
    combinations: tuple[Mapping[str, Any], ...] = ()

    def __post_init__(self) -> None:
        for name in ("forward_prefetch", "backward_prefetch"):
            lists = {k: tuple(v) for k, v in getattr(self, name).items()}
            object.__setattr__(self, name, MappingProxyType(lists))
        frozen_args = MappingProxyType({k: jsonable(v) for k, v in self.concrete_args.items()})
        object.__setattr__(self, "concrete_args", frozen_args)

    def unit(self, name: str) -> Unit:
        """The unit of that qualified name.

        Raises:
            KeyError: If there is none.
        """
        for unit in self.units:
            if unit.name == name:
                return unit
        raise KeyError(name)

    def failing(self, gates: Iterable[Severity | CheckKind]) -> tuple[Check, ...]:
        """The checks a gate fails on: a severity gates on it and worse, a kind on itself."""
        chosen = tuple(gates)
        worst = max((SEVERITY_RANK[g] for g in chosen if isinstance(g, Severity)), default=-1)
        kinds = {g for g in chosen if isinstance(g, CheckKind)}
        return tuple(
            c for c in self.checks if c.kind in kinds or SEVERITY_RANK[c.severity] <= worst
        )

    def count(self, severity: Severity) -> int:
        """How many checks have that severity."""
        return sum(1 for c in self.checks if c.severity is severity)

    def to_dict(self) -> dict[str, Any]:
        total = sum(u.bytes for u in self.units)
        return {
            "kind": "fsdp-plan",
            "schema_version": SCHEMA_VERSION,
            "target": self.target,
            "mode": self.mode,
            "concrete_args": dict(self.concrete_args),
            "seed": self.seed,
            "combinations": [{k: jsonable(v) for k, v in c.items()} for c in self.combinations],
            "prefetch": self.prefetch,
            "unit_rule": self.unit_rule,
            "backward_from": self.backward_from,
            "units": [unit.to_dict() for unit in self.units],
            "forward_prefetch": {k: list(v) for k, v in self.forward_prefetch.items()},
            "backward_prefetch": {k: list(v) for k, v in self.backward_prefetch.items()},
            "checks": [check.to_dict() for check in self.checks],
            "summary": {
                "units": len(self.units),
                "bytes": total,
                "largest_unit_bytes": max((u.bytes for u in self.units), default=0),
                **{severity.value: self.count(severity) for severity in SEVERITY_RANK},
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FsdpPlan:
        """Rebuild a plan from :meth:`to_dict` output (e.g. loaded JSON).

        Raises:
            SchemaError: If it is not a plan of this schema version, or a field
                is missing or of the wrong type.
        """
        if not isinstance(data, Mapping) or data.get("kind") != "fsdp-plan":
            raise SchemaError('not an FSDP plan (its "kind" is not "fsdp-plan")')
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise SchemaError(
                f"plan has schema_version {version!r}; this execorder reads {SCHEMA_VERSION}"
            )
        fields = Fields(data, "")
        lists = {}
        for key in ("forward_prefetch", "backward_prefetch"):
            raw = fields.get(key, dict)
            for name, targets in raw.items():
                if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
                    raise SchemaError(f"{key}.{name} must be a list of unit names")
            lists[key] = raw
        return cls(
            target=fields.get("target", str),
            units=tuple(Unit.from_dict(u.data, u.where) for u in fields.objects("units")),
            forward_prefetch=lists["forward_prefetch"],
            backward_prefetch=lists["backward_prefetch"],
            checks=tuple(Check.from_dict(c.data, c.where) for c in fields.objects("checks")),
            prefetch=fields.get("prefetch", int, default=1),
            unit_rule=fields.get("unit_rule", str, default=""),
            backward_from=fields.get("backward_from", str, default="reverse post-forward order"),
            mode=fields.get("mode", str, default="eager"),
            concrete_args=fields.get("concrete_args", dict, default={}),
            seed=fields.get("seed", int, type(None), default=None),
            combinations=tuple(fields.get("combinations", list, default=[])),
        )


# -- choosing units -------------------------------------------------------------


def choose_units(layout: Layout, wanted: Sequence[str] = ()) -> tuple[tuple[str, ...], str]:
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
        rule = "--unit " + ", ".join(wanted)
    else:
        names, rule = set(), ""
        for classes, why in (
            (layout.no_split, "transformers' _no_split_modules"),
            (layout.repeated, "the repeated block class"),
        ):
            names = {m.name for m in modules if m.type in classes}
            if names:
                used = [c for c in classes if any(m.type == c for m in modules)]
                rule = f"{why} ({', '.join(used)})"
                break
        if not names:
            rule = "the root alone: no repeated block found (choose units with --unit)"
    return (ROOT, *(m.name for m in modules if m.name in names)), rule


def _block_classes(layout: Layout) -> tuple[str, ...]:
    return tuple(dict.fromkeys((*layout.no_split, *layout.repeated)))


# -- the plan -------------------------------------------------------------------


class _Model:
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


def prefetch_lists(
    sequence: Sequence[tuple[str, frozenset[str]]], count: int
) -> dict[str, tuple[str, ...]]:
    """Each unit's prefetch list: units among the next ``count`` to start after each of its starts.

    FSDP2 prefetches a unit's list each time that unit starts, so a static
    list is right only with targets that come next after each start; a unit
    that runs again later keeps only those. Units already running when it
    starts are gathered already, and never listed.
    """
    lists: dict[str, tuple[str, ...]] = {}
    for position, (unit, _) in enumerate(sequence):
        running = sequence[position][1]
        following: list[str] = []
        for other, _ in sequence[position + 1 :]:
            if len(following) == count:
                break
            if other != unit and other not in running and other not in following:
                following.append(other)
        if unit in lists:
            lists[unit] = tuple(t for t in lists[unit] if t in following)
        else:
            lists[unit] = tuple(following)
    return lists


def plan_fsdp(
    report: Report,
    layout: Layout,
    *,
    units: Sequence[str] = (),
    prefetch: int = 1,
    others: Sequence[tuple[Mapping[str, Any], Report]] = (),
) -> FsdpPlan:
    """Plan FSDP2 for a model from the order its forward ran.

    Args:
        report: What forward did (eager with a backward gives the real
            backward order; otherwise it is taken as reverse post-forward).
        layout: The model's modules.
        units: Class names or qualified names of the units; empty for the
            default (see :func:`choose_units`).
        prefetch: How many units each prefetch list names.
        others: With a sweep, the other runs (their concrete arguments and
            reports): units that run in some only, or in another order, are
            checked.

    Raises:
        UnitError: If a unit name matches no module.
        ValueError: If ``prefetch`` is below 1.
    """
    if prefetch < 1:
        raise ValueError(f"prefetch must be 1 or more, not {prefetch}")
    unit_names, rule = choose_units(layout, units)
    model = _Model(report, layout, unit_names)
    forward = prefetch_lists(model.forward_sequence(), prefetch)
    backward_sequence, recorded = model.backward_sequence()
    backward = prefetch_lists(backward_sequence, prefetch)
    backward_order = list(dict.fromkeys(u for u, _ in backward_sequence))
    built = _units(model)
    checks = [
        *_external_uses(model),
        *_shared(model),
        *_sweep_checks(model, report, layout, unit_names, others),
        *_not_run(model, built),
        *_registration_order(model, forward, backward, backward_order, prefetch),
        *_assumptions(model),
        *_repeated(model, built),
    ]
    if len(unit_names) == 1:
        checks.append(
            _check(
                CheckKind.ROOT_ONLY,
                (ROOT,),
                (),
                "only the root is a unit: FSDP2 gathers the whole model at once, "
                "which saves no memory in forward; choose units with --unit CLASS",
            )
        )
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
        backward_from="recorded backward" if recorded else "reverse post-forward order",
        mode=str(report.mode),
        concrete_args=report.concrete_args,
        seed=report.seed,
        combinations=(report.concrete_args, *(args for args, _ in others)) if others else (),
    )


def _units(model: _Model) -> list[Unit]:
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


def _check(kind: CheckKind, units: Sequence[str], params: Sequence[str], message: str) -> Check:
    return Check(kind, SEVERITY[kind], tuple(units), tuple(params), message)


def _listed(names: Sequence[str], most: int = 3) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _external_uses(model: _Model) -> list[Check]:
    found: dict[tuple[str, str], list[str]] = {}
    for index, call in enumerate(model.report.modules):
        running = model.active[index]
        for group in call.uses:
            if group.module not in (call.name, *call.aliases):
                continue  # a child's call: its own uses are checked at that call
            for param in group.params:
                holders = model.holders[param]  # groups name parameters by their first name
                if running.isdisjoint(holders):
                    params = found.setdefault((holders[0], call.name), [])
                    if param not in params:
                        params.append(param)
    return [
        _check(
            CheckKind.EXTERNAL_USE,
            (owner, model.unit_of(user)),
            params,
            f"{label(user)} uses {_listed(params)} of unit {label(owner)} while that unit "
            "is not running: FSDP2 gathers a unit's parameters only for its own forward, "
            "so this reads a shard (it fails, or computes on the wrong values); call the "
            "module instead, or make both one unit",
        )
        for (owner, user), params in found.items()
    ]


def _shared(model: _Model) -> list[Check]:
    checks = []
    for info in model.params:
        holders = model.holders[info.name]
        if len(holders) > 1:
            names = (info.name, *info.aliases)
            checks.append(
                _check(
                    CheckKind.SHARED,
                    holders,
                    names,
                    f"{' and '.join(names)} are one parameter in units "
                    f"{' and '.join(label(u) for u in holders)}: FSDP2 refuses a parameter "
                    "shared by two of its groups (at the first forward); put the modules "
                    "sharing it in one unit (fully_shard([a, b]), their common parent, or "
                    "the root)",
                )
            )
    return checks


def _not_run(model: _Model, built: Sequence[Unit]) -> list[Check]:
    return [
        _check(
            CheckKind.NOT_RUN,
            (unit.name,),
            unit.param_names,
            f"unit {label(unit.name)} never runs in forward: its {unit.params} "
            "parameters get no gradient, and a prefetch naming it gathers them for nothing",
        )
        for unit in built
        if unit.first_call is None and unit.name != ROOT
    ]


def _repeated(model: _Model, built: Sequence[Unit]) -> list[Check]:
    return [
        _check(
            CheckKind.REPEATED,
            (unit.name,),
            (),
            f"unit {label(unit.name)} runs {unit.calls} times in forward: with "
            f"reshard_after_forward it is gathered {unit.calls} times "
            f"({size_text(unit.bytes)} each), and FSDP2 prefetches its list on every call, "
            "so its list keeps only units that run next after each of them",
        )
        for unit in built
        if unit.calls > 1 and unit.name != ROOT
    ]


def _registration_order(
    model: _Model,
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
            ("forward", blocks[index + 1 : index + 1 + count], forward.get(unit, ())),
            ("backward", blocks[max(0, index - count) : index][::-1], backward.get(unit, ())),
        )
        for direction, listed, right in directions:
            for target in listed:
                if target in right:
                    continue
                step = "i+1" if direction == "forward" else "i-1"
                when = _when(model, unit, target, direction, backward_order)
                checks.append(
                    _check(
                        CheckKind.REGISTRATION_ORDER,
                        (unit, target),
                        (),
                        f"{direction}: registration order (block i prefetches block {step}) "
                        f"has {label(unit)} prefetch {label(target)}, which {when}; the "
                        f"plan's list: {', '.join(map(label, right)) or 'none'}",
                    )
                )
    return checks


def _when(
    model: _Model, unit: str, target: str, direction: str, backward_order: Sequence[str]
) -> str:
    if target not in model.first_call:
        return "never runs in forward: gathered for nothing and held"
    if model.calls[unit] > 1:
        return (
            f"does not run next after each of its {model.calls[unit]} calls (FSDP2 "
            "prefetches on every call): gathered early and held"
        )
    if direction == "backward":
        if backward_order.index(target) < backward_order.index(unit):
            return "already ran its backward: gathered again for nothing"
        return "does not run next in backward: gathered early and held"
    if model.first_call[target] < model.first_call[unit]:
        return "already ran: gathered again and held until backward"
    return "does not run next: gathered early and held"


def _assumptions(model: _Model) -> list[Check]:
    report = model.report
    if not report.assumptions:
        return []
    where = _listed([f"{a.op} in {label(a.module)}" for a in report.assumptions])
    return [
        _check(
            CheckKind.ASSUMPTION,
            tuple(dict.fromkeys(model.unit_of(a.module) for a in report.assumptions)),
            tuple(p.name for p in report.on_assumption),
            f"the order rests on what the meta run assumed ({where}): a real run "
            "may route elsewhere and run units in another order",
        )
    ]


def _sweep_checks(
    model: _Model,
    report: Report,
    layout: Layout,
    unit_names: Sequence[str],
    others: Sequence[tuple[Mapping[str, Any], Report]],
) -> list[Check]:
    if not others:
        return []
    runs = [(report.concrete_args, model)] + [
        (args, _Model(other, layout, unit_names)) for args, other in others
    ]
    checks = []
    for unit in unit_names:
        missing = [args for args, run in runs if unit not in run.first_call]
        if missing and len(missing) < len(runs):
            checks.append(
                _check(
                    CheckKind.VARIES,
                    (unit,),
                    (),
                    f"unit {label(unit)} runs for some values only (not with "
                    f"{_listed([_args(a) for a in missing], 2)}): ranks that disagree wait "
                    "in its all-gather forever (a hang)",
                )
            )
    everywhere = [u for u in model.ran() if all(u in run.first_call for _, run in runs)]
    first = [u for u in model.ran() if u in everywhere]
    for args, run in runs[1:]:
        order = [u for u in run.ran() if u in everywhere]
        if order != first:
            checks.append(
                _check(
                    CheckKind.ORDER_VARIES,
                    tuple(u for u, v in zip(first, order, strict=True) if u != v),
                    (),
                    f"with {_args(args)} the units run in another order: explicit prefetch "
                    "lists, being fixed, mistarget for some values",
                )
            )
    return checks


def _args(args: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items()) or "no arguments"
