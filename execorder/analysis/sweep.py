"""Sweeps: trace every combination of concrete arguments, compare parameter use.

A parameter used in some combinations but not others is branch-dependent: a
rank that takes the other branch leaves it without a gradient (DDP fails) or
skips its all-gather (FSDP ranks diverge).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from execorder.errors import ExecOrderError, SweepAxisError, SweepFailure
from execorder.report import SCHEMA_VERSION, Category, Report, Word, jsonable
from execorder.report.kinds import gate


class SweepClass(Word):
    """Where a parameter is used across the combinations of a sweep."""

    ALWAYS = "always"
    SOME = "some"  # branch-dependent: a rank taking another branch diverges
    NEVER = "never"


ONE_RUN = (Category.OUTPUTS, Category.REENTRANT, Category.RECOMPUTE_ONLY)
"""Categories of one run's report that a sweep does not gate on."""
SWEEP_CATEGORIES = tuple(c for c in Category if c not in ONE_RUN)
"""What a sweep's gate can fail on: ``outputs`` is one run's (its outputs' reach)."""


@dataclass(frozen=True, slots=True)
class Combination:
    """One traced combination and its headline numbers."""

    args: Mapping[str, Any]
    calls: int
    params_used: int
    params_no_grad: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "args": {k: jsonable(v) for k, v in self.args.items()},
            "calls": self.calls,
            "params_used": self.params_used,
            "params_no_grad": self.params_no_grad,
        }


@dataclass(frozen=True, slots=True)
class SweepParam:
    """How one parameter fares across the combinations.

    Attributes:
        name: First qualified name.
        aliases: Other qualified names.
        status: Used always, in some combinations only (branch-dependent),
            or never.
        gradient: Given a gradient always, in some combinations only, or
            never; None for a frozen parameter.
        used_in: Indices of the combinations whose forward uses it.
        grad_in: Indices of the combinations in which it gets a gradient.
        requires_grad: False for a frozen parameter.
        assumed_in: Indices of the combinations in which its status rests on
            an assumption (a meta run's routing; see ``Report.assumptions``).
    """

    name: str
    aliases: tuple[str, ...]
    status: SweepClass
    used_in: tuple[int, ...]
    grad_in: tuple[int, ...]
    requires_grad: bool
    gradient: SweepClass | None = None
    assumed_in: tuple[int, ...] = ()

    @property
    def branch_dependent(self) -> bool:
        """Trainable, and used or given a gradient in some combinations only."""
        some = SweepClass.SOME
        return self.requires_grad and (self.status is some or self.gradient is some)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "aliases": list(self.aliases),
            "status": self.status.value,
            "gradient": None if self.gradient is None else self.gradient.value,
            "used_in": list(self.used_in),
            "grad_in": list(self.grad_in),
            "requires_grad": self.requires_grad,
            "assumed_in": list(self.assumed_in),
        }


@dataclass(frozen=True, slots=True)
class SweepReport:
    """Parameter use across every combination of swept concrete arguments.

    Attributes:
        target: What was traced.
        axes: Each swept argument with its values, in option order.
        fixed: Concrete arguments held fixed in every combination.
        combinations: The combinations, in cross-product order.
        params: Every parameter, in ``named_parameters()`` order.
        external: External uses in any combination, as ``"param used by
            module"``, each once.
    """

    target: str
    axes: tuple[tuple[str, tuple[Any, ...]], ...]
    fixed: Mapping[str, Any]
    combinations: tuple[Combination, ...]
    params: tuple[SweepParam, ...]
    external: tuple[str, ...] = ()

    def by_status(self, status: SweepClass | str) -> tuple[SweepParam, ...]:
        """The parameters of one class, in ``named_parameters()`` order."""
        wanted = SweepClass(status)
        return tuple(p for p in self.params if p.status is wanted)

    def findings(self, category: Category | str) -> tuple[str, ...]:
        """What a CI gate category found across the combinations.

        The trainable parameters that miss a gradient in some combination
        fall in exactly one of ``BRANCH`` (used or given a gradient in some
        combinations only), ``UNUSED`` (used in none) and ``DEAD`` (used, but
        given a gradient in none); ``EXTERNAL`` lists external uses in any;
        ``ASSUMPTION`` the trainable parameters whose status rests on an
        assumption in some combination.
        """
        kind = Category(category)
        if kind in ONE_RUN:
            raise ValueError(f"{kind} is a finding of one report, not of a sweep")
        if kind is Category.EXTERNAL:
            return self.external
        trainable = [p for p in self.params if p.requires_grad]
        if kind is Category.ASSUMPTION:
            return tuple(p.name for p in trainable if p.assumed_in)
        if kind is Category.BRANCH:
            return tuple(p.name for p in trainable if p.branch_dependent)
        if kind is Category.UNUSED:
            return tuple(p.name for p in trainable if p.status is SweepClass.NEVER)
        return tuple(
            p.name
            for p in trainable
            if p.status is SweepClass.ALWAYS and p.gradient is SweepClass.NEVER
        )

    def failing(self, categories: Iterable[Category | str]) -> Mapping[Category, tuple[str, ...]]:
        """What a CI gate on ``categories`` fails on, as :meth:`Report.failing` (``BRANCH`` too)."""
        return gate(self.findings, categories)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "sweep",
            "schema_version": SCHEMA_VERSION,
            "target": self.target,
            "axes": [{"name": n, "values": [jsonable(v) for v in vs]} for n, vs in self.axes],
            "fixed": {k: jsonable(v) for k, v in self.fixed.items()},
            "combinations": [c.to_dict() for c in self.combinations],
            "params": [p.to_dict() for p in self.params],
            "summary": {kind.value: len(self.by_status(kind)) for kind in SweepClass},
            "findings": {kind.value: list(self.findings(kind)) for kind in SWEEP_CATEGORIES},
        }


def combinations(axes: Sequence[tuple[str, Sequence[Any]]]) -> list[dict[str, Any]]:
    """The cross product of the axes, as keyword dicts."""
    names = [name for name, _ in axes]
    return [
        dict(zip(names, values, strict=True)) for values in itertools.product(*(v for _, v in axes))
    ]


def check_axes(axes: Sequence[tuple[str, Sequence[Any]]], fixed: Mapping[str, Any]) -> None:
    """Refuse an argument swept twice, or both swept and fixed.

    Raises:
        SweepAxisError: Naming it.
    """
    names = [name for name, _ in axes]
    for name in names:
        if names.count(name) > 1:
            raise SweepAxisError(name, fixed=False)
        if name in fixed:
            raise SweepAxisError(name, fixed=True)


def sweep(
    trace: Callable[[Mapping[str, Any]], Report],
    *,
    axes: Sequence[tuple[str, Sequence[Any]]],
    fixed: Mapping[str, Any] | None = None,
    target: str,
) -> SweepReport:
    """Trace every combination and classify each parameter by where it is used.

    Args:
        trace: Traces the model under the given concrete arguments.
        axes: The swept arguments and their values.
        fixed: Concrete arguments shared by every combination.
        target: What is being traced, for the report.

    Raises:
        SweepAxisError: If an argument is both swept and fixed, or swept twice.
        SweepFailure: If a combination cannot be traced, naming it.
    """
    fixed = dict(fixed or {})
    check_axes(axes, fixed)
    reports = []
    combos = combinations(axes)
    for combo in combos:
        try:
            reports.append(trace({**fixed, **combo}))
        except ExecOrderError as exc:
            raise SweepFailure(combo, exc) from exc
    params = []
    for info in reports[0].all_params():
        used_in = tuple(i for i, r in enumerate(reports) if r.param(info.name).used)
        grad_in = tuple(
            i
            for i, r in enumerate(reports)
            if info.requires_grad and not r.param(info.name).dead and r.param(info.name).used
        )
        assumed_in = tuple(
            i for i, r in enumerate(reports) if r.param(info.name).rests_on_assumption
        )
        status = _class(len(used_in), len(reports))
        gradient = _class(len(grad_in), len(reports)) if info.requires_grad else None
        params.append(
            SweepParam(
                info.name,
                info.aliases,
                status,
                used_in,
                grad_in,
                info.requires_grad,
                gradient,
                assumed_in,
            )
        )
    return SweepReport(
        target=target,
        axes=tuple((name, tuple(values)) for name, values in axes),
        fixed=MappingProxyType(fixed),
        combinations=tuple(
            Combination(
                MappingProxyType(combo),
                r.summary.calls,
                r.summary.params_used,
                r.summary.params_no_grad,
            )
            for combo, r in zip(combos, reports, strict=True)
        ),
        params=tuple(params),
        external=tuple(dict.fromkeys(u for r in reports for u in r.findings(Category.EXTERNAL))),
    )


def _class(count: int, total: int) -> SweepClass:
    """Always, some or never: of ``total`` combinations, ``count`` had it."""
    if count == total:
        return SweepClass.ALWAYS
    return SweepClass.SOME if count else SweepClass.NEVER
