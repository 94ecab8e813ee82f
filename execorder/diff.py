"""Comparing two reports: what changed in execution order and parameter use."""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from execorder.errors import ExecOrderError
from execorder.report import SCHEMA_VERSION, ParamInfo, Report, SchemaError


class ReportFileError(ExecOrderError):
    """A report file is missing, not JSON, or not a report of this schema version."""


def load_report(path: str | Path) -> Report:
    """Read a report written by ``execorder trace --format json``.

    Raises:
        ReportFileError: If the file is missing, is not JSON, is not a report,
            or has another ``schema_version``.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportFileError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportFileError(f"{path}: cannot read it ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportFileError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict) or data.get("kind", "report") != "report":
        kind = data.get("kind") if isinstance(data, dict) else type(data).__name__
        raise ReportFileError(f"{path}: not a trace report (kind {kind!r})")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ReportFileError(
            f"{path}: report has schema_version {data.get('schema_version')!r}, this "
            f"execorder reads {SCHEMA_VERSION}; regenerate it with this version "
            "(e.g. --update-baseline)"
        )
    try:
        return Report.from_dict(data)
    except SchemaError as exc:
        raise ReportFileError(f"{path}: {exc}") from None


@dataclass(frozen=True, slots=True)
class CallChange:
    """One line of the aligned module-order diff.

    ``op`` is ``"="`` (unchanged, shown as context), ``"-"`` (only in the old
    report), ``"+"`` (only in the new one); ``old``/``new`` are call indices.
    ``moved`` marks a call removed here and added elsewhere (a reorder).
    """

    op: str
    name: str
    type: str
    depth: int
    old: int | None
    new: int | None
    moved: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "name": self.name,
            "type": self.type,
            "depth": self.depth,
            "old": self.old,
            "new": self.new,
            "moved": self.moved,
        }


@dataclass(frozen=True, slots=True)
class Gap:
    """Unchanged calls left out of the aligned diff."""

    count: int

    def to_dict(self) -> dict[str, Any]:
        return {"op": "...", "count": self.count}


@dataclass(frozen=True, slots=True)
class ParamChange:
    """A parameter whose status, shape, dtype or first-use position changed.

    ``what`` is one of ``added``, ``removed``, ``became unused``, ``became
    dead``, ``used again`` (was unused), ``became live`` (was dead),
    ``shape``, ``dtype``, ``moved`` (first-use order).
    """

    name: str
    what: str
    old: str | None
    new: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "what": self.what, "old": self.old, "new": self.new}


@dataclass(frozen=True, slots=True)
class ReportDiff:
    """What changed from one report to another.

    Attributes:
        old_target: The old report's target.
        new_target: The new report's target.
        notes: Context that makes the comparison questionable (other concrete
            arguments, another mode); not differences in themselves.
        calls: The aligned module-order diff, unchanged stretches as gaps.
        params: Parameter changes.
        external_added: External uses new in the new report.
        external_removed: External uses gone from the new report.
    """

    old_target: str
    new_target: str
    notes: tuple[str, ...]
    calls: tuple[CallChange | Gap, ...]
    params: tuple[ParamChange, ...]
    external_added: tuple[str, ...]
    external_removed: tuple[str, ...]

    @property
    def calls_changed(self) -> bool:
        return any(isinstance(c, CallChange) and c.op != "=" for c in self.calls)

    @property
    def equivalent(self) -> bool:
        return not (
            self.calls_changed or self.params or self.external_added or self.external_removed
        )

    def counts(self) -> dict[str, int]:
        calls = [c for c in self.calls if isinstance(c, CallChange)]
        return {
            "calls_added": sum(c.op == "+" and not c.moved for c in calls),
            "calls_removed": sum(c.op == "-" and not c.moved for c in calls),
            "calls_moved": sum(c.op == "+" and c.moved for c in calls),
            "params_changed": len(self.params),
            "external_added": len(self.external_added),
            "external_removed": len(self.external_removed),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "diff",
            "schema_version": SCHEMA_VERSION,
            "old_target": self.old_target,
            "new_target": self.new_target,
            "equivalent": self.equivalent,
            "notes": list(self.notes),
            "counts": self.counts(),
            "calls": [c.to_dict() for c in self.calls],
            "params": [p.to_dict() for p in self.params],
            "external_added": list(self.external_added),
            "external_removed": list(self.external_removed),
        }


def _status(param: ParamInfo) -> str:
    return "dead" if param.dead else "used" if param.used else "unused"


def _became(old: str, new: str) -> str:
    if new == "used":
        return "became live" if old == "dead" else "used again"
    return f"became {new}"


def _shape(param: ParamInfo) -> str:
    return "[" + ", ".join(str(d) for d in param.shape) + "]"


def _align_calls(old: Report, new: Report, context: int) -> tuple[CallChange | Gap, ...]:
    """An aligned diff of the module forward orders, with ``context`` calls around changes."""
    old_keys = [(c.name, c.type) for c in old.modules]
    new_keys = [(c.name, c.type) for c in new.modules]
    matcher = difflib.SequenceMatcher(a=old_keys, b=new_keys, autojunk=False)
    ops = matcher.get_opcodes()
    removed = {
        old_keys[i]
        for tag, i1, i2, _, _ in ops
        if tag in ("delete", "replace")
        for i in range(i1, i2)
    }
    added = {
        new_keys[j]
        for tag, _, _, j1, j2 in ops
        if tag in ("insert", "replace")
        for j in range(j1, j2)
    }
    moved = removed & added
    lines: list[CallChange | Gap] = []
    for index, (tag, i1, i2, j1, j2) in enumerate(ops):
        if tag == "equal":
            keep_head = context if index > 0 else 0
            keep_tail = context if index < len(ops) - 1 else 0
            span = i2 - i1
            if span > keep_head + keep_tail + 1:
                head = range(keep_head)
                tail = range(span - keep_tail, span)
                lines.extend(_same(old, new, i1 + k, j1 + k) for k in head)
                lines.append(Gap(span - keep_head - keep_tail))
                lines.extend(_same(old, new, i1 + k, j1 + k) for k in tail)
            else:
                lines.extend(_same(old, new, i1 + k, j1 + k) for k in range(span))
            continue
        for i in range(i1, i2):
            call = old.modules[i]
            lines.append(
                CallChange("-", call.name, call.type, call.depth, i, None, old_keys[i] in moved)
            )
        for j in range(j1, j2):
            call = new.modules[j]
            lines.append(
                CallChange("+", call.name, call.type, call.depth, None, j, new_keys[j] in moved)
            )
    return tuple(lines)


def _same(old: Report, new: Report, i: int, j: int) -> CallChange:
    call = new.modules[j]
    return CallChange("=", call.name, call.type, call.depth, i, j)


def _param_changes(old: Report, new: Report) -> list[ParamChange]:
    olds = {p.name: p for p in old.all_params()}
    news = {p.name: p for p in new.all_params()}
    changes: list[ParamChange] = []
    for name, param in olds.items():
        if name not in news:
            changes.append(ParamChange(name, "removed", _status(param), None))
    for name, param in news.items():
        before = olds.get(name)
        if before is None:
            changes.append(ParamChange(name, "added", None, _status(param)))
            continue
        if _status(before) != _status(param):
            changes.append(
                ParamChange(
                    name, _became(_status(before), _status(param)), _status(before), _status(param)
                )
            )
        if before.shape != param.shape:
            changes.append(ParamChange(name, "shape", _shape(before), _shape(param)))
        if before.dtype != param.dtype:
            changes.append(ParamChange(name, "dtype", before.dtype, param.dtype))
    changes.extend(_order_changes(old.params, new.params))
    return changes


def _order_changes(old: Sequence[ParamInfo], new: Sequence[ParamInfo]) -> list[ParamChange]:
    """Parameters used in both whose place in the first-use order changed."""
    common = {p.name for p in old} & {p.name for p in new}
    old_order = [p.name for p in old if p.name in common]
    new_order = [p.name for p in new if p.name in common]
    if old_order == new_order:
        return []
    matcher = difflib.SequenceMatcher(a=old_order, b=new_order, autojunk=False)
    kept = {old_order[b.a + k] for b in matcher.get_matching_blocks() for k in range(b.size)}
    old_pos = {n: i for i, n in enumerate(p.name for p in old)}
    new_pos = {n: i for i, n in enumerate(p.name for p in new)}
    return [
        ParamChange(name, "moved", f"#{old_pos[name]}", f"#{new_pos[name]}")
        for name in new_order
        if name not in kept
    ]


def _external(report: Report) -> set[str]:
    return {f"{u.param} used by {u.module or '(root)'}" for u in report.external}


def diff_reports(old: Report, new: Report, *, context: int = 2) -> ReportDiff:
    """Compare two reports.

    Args:
        old: The baseline.
        new: The report to check against it.
        context: Unchanged calls shown around each change in the module diff.

    Returns:
        The differences; ``equivalent`` is True when there are none.
    """
    notes = []
    if dict(old.concrete_args) != dict(new.concrete_args):
        notes.append(
            f"concrete args differ: {_args(old.concrete_args)} -> {_args(new.concrete_args)}"
        )
    if old.mode != new.mode:
        notes.append(f"modes differ: {old.mode} -> {new.mode}")
    old_ext, new_ext = _external(old), _external(new)
    return ReportDiff(
        old_target=old.target,
        new_target=new.target,
        notes=tuple(notes),
        calls=_align_calls(old, new, context),
        params=tuple(_param_changes(old, new)),
        external_added=tuple(sorted(new_ext - old_ext)),
        external_removed=tuple(sorted(old_ext - new_ext)),
    )


def _args(args: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items()) or "(none)"
