"""Sweeps: trace every combination of concrete arguments, compare parameter use.

A parameter used in some combinations but not others is branch-dependent: a
rank that takes the other branch leaves it without a gradient (DDP fails) or
skips its all-gather (FSDP ranks diverge).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from execorder.errors import ConcreteArgError, ExecOrderError, TraceFailure
from execorder.report import SCHEMA_VERSION, Report, jsonable

ALWAYS, SOME, NEVER = "always", "some", "never"


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
        status: ``"always"`` used, used in ``"some"`` combinations only (branch-
            dependent), or ``"never"`` used.
        used_in: Indices of the combinations whose forward uses it.
        grad_in: Indices of the combinations in which it gets a gradient.
        requires_grad: False for a frozen parameter.
    """

    name: str
    aliases: tuple[str, ...]
    status: str
    used_in: tuple[int, ...]
    grad_in: tuple[int, ...]
    requires_grad: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "aliases": list(self.aliases),
            "status": self.status,
            "used_in": list(self.used_in),
            "grad_in": list(self.grad_in),
            "requires_grad": self.requires_grad,
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
    """

    target: str
    axes: tuple[tuple[str, tuple[Any, ...]], ...]
    fixed: Mapping[str, Any]
    combinations: tuple[Combination, ...]
    params: tuple[SweepParam, ...]

    def by_status(self, status: str) -> tuple[SweepParam, ...]:
        return tuple(p for p in self.params if p.status == status)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "sweep",
            "schema_version": SCHEMA_VERSION,
            "target": self.target,
            "axes": [{"name": n, "values": [jsonable(v) for v in vs]} for n, vs in self.axes],
            "fixed": {k: jsonable(v) for k, v in self.fixed.items()},
            "combinations": [c.to_dict() for c in self.combinations],
            "params": [p.to_dict() for p in self.params],
            "summary": {status: len(self.by_status(status)) for status in (ALWAYS, SOME, NEVER)},
        }


def combinations(axes: Sequence[tuple[str, Sequence[Any]]]) -> list[dict[str, Any]]:
    """The cross product of the axes, as keyword dicts."""
    names = [name for name, _ in axes]
    return [
        dict(zip(names, values, strict=True)) for values in itertools.product(*(v for _, v in axes))
    ]


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
        ConcreteArgError: If an argument is both swept and fixed, or swept twice.
        TraceFailure: If a combination cannot be traced, naming it.
    """
    fixed = dict(fixed or {})
    names = [name for name, _ in axes]
    for name in names:
        if names.count(name) > 1:
            raise ConcreteArgError(f"--sweep {name} is given more than once")
        if name in fixed:
            raise ConcreteArgError(f"{name} is both swept (--sweep) and fixed (--concrete)")
    reports = []
    combos = combinations(axes)
    for combo in combos:
        try:
            reports.append(trace({**fixed, **combo}))
        except ExecOrderError as exc:
            where = ", ".join(f"{k}={v!r}" for k, v in combo.items())
            raise TraceFailure(f"with {where}: {exc}") from exc
    params = []
    for info in reports[0].all_params():
        used_in = tuple(i for i, r in enumerate(reports) if r.param(info.name).used)
        grad_in = tuple(
            i
            for i, r in enumerate(reports)
            if info.requires_grad and not r.param(info.name).dead and r.param(info.name).used
        )
        status = ALWAYS if len(used_in) == len(reports) else SOME if used_in else NEVER
        params.append(
            SweepParam(info.name, info.aliases, status, used_in, grad_in, info.requires_grad)
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
    )
