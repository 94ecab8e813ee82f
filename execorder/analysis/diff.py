"""Comparing two reports: what changed in execution order and parameter use."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from execorder.analysis.align import matches, opcodes
from execorder.report import (
    SCHEMA_VERSION,
    Category,
    DdpBuilt,
    ParamInfo,
    ParamStatus,
    Report,
    Word,
    shape_text,
)
from execorder.report.memory import Memory


class DiffOp(Word):
    """A line of the aligned module-order diff: unchanged, removed or added."""

    SAME = "="
    REMOVED = "-"
    ADDED = "+"


class ChangeKind(Word):
    """How a parameter changed between two reports."""

    ADDED = "added"
    REMOVED = "removed"
    BECAME_UNUSED = "became unused"
    BECAME_DEAD = "became dead"
    USED_AGAIN = "used again"  # was unused
    BECAME_LIVE = "became live"  # was dead
    SHAPE = "shape"
    DTYPE = "dtype"
    MOVED = "moved"  # its place in the first-use order
    ON_ASSUMPTION = "now on assumption"  # its status rests on a meta run's assumption now
    OFF_ASSUMPTION = "no longer on assumption"
    BECAME_FROZEN = "became frozen"  # requires_grad turned off: DDP no longer waits for it
    BECAME_TRAINABLE = "became trainable"  # requires_grad turned on
    PASSES = "backward passes"  # how many backward passes give it its gradient (reentrant)
    ON_RECOMPUTE_ONLY = "now recompute only"  # only a reentrant recompute gives it a gradient
    OFF_RECOMPUTE_ONLY = "no longer recompute only"
    ON_OTHER_OUTPUTS = "now other outputs only"  # the main output no longer reaches it
    OFF_OTHER_OUTPUTS = "no longer other outputs only"
    BACKWARD_MOVED = "moved in backward"  # its place in the recorded gradient order
    DDP_IGNORED = "now ignored by DDP"  # named in _ddp_params_and_buffers_to_ignore now
    DDP_WAITS = "no longer ignored by DDP"  # DDP numbers it, and waits for its gradient
    ON_SPLIT_BY_BACKWARDS = "now split by backwards"  # parts from several backward calls
    OFF_SPLIT_BY_BACKWARDS = "no longer split by backwards"
    ON_DDP_UNREDUCED = "now unreduced by DDP"  # static_graph's first step all-reduced first
    OFF_DDP_UNREDUCED = "no longer unreduced by DDP"


@dataclass(frozen=True, slots=True)
class CallChange:
    """One line of the aligned module-order diff.

    ``op`` says whether the call is unchanged (shown as context), only in
    the old report, or only in the new one; ``old``/``new`` are call indices.
    ``moved`` marks a call removed here and added elsewhere (a reorder).
    """

    op: DiffOp
    name: str
    type: str
    depth: int
    old: int | None
    new: int | None
    moved: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "op": self.op.value,
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

    ``old`` and ``new`` are the values before and after, as text (a status,
    a shape, a dtype, a ``#position``), None where there is none.
    """

    name: str
    what: ChangeKind
    old: str | None
    new: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "what": self.what.value, "old": self.old, "new": self.new}


class DiffNoteKind(Word):
    """What differs between two reports besides what forward did."""

    TARGETS = "targets"
    ROOTS = "roots"  # the root modules' classes: different models
    NAMES = "names"  # fewer than half the parameter names shared: different models
    CONCRETE_ARGS = "concrete-args"
    MODES = "modes"
    SEEDS = "seeds"
    INPUTS = "inputs"  # the input tensors' sizes: what forward ran on
    MEMORY = "memory"  # the training step measured: in one report only, or stepped otherwise


@dataclass(frozen=True, slots=True)
class DiffNote:
    """Context that makes a comparison questionable: what differs, from what to what.

    Attributes:
        kind: What differs.
        old: The baseline's (its target, root class, concrete arguments,
            mode or seed); for ``NAMES``, how many names both have.
        new: The new report's; for ``NAMES``, how many the larger one has.
    """

    kind: DiffNoteKind
    old: Any
    new: Any

    @property
    def message(self) -> str:
        """One line for a person, as the diff's view writes it."""
        from execorder.output.views.diff import note_text

        return note_text(self)

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class PeakChange:
    """A training step's peak, where both reports measured one (``--memory``) and the peaks
    differ: each report's measure, and the module call (by name) the peak fell in."""

    old: Memory
    new: Memory
    old_call: str | None
    new_call: str | None

    def to_dict(self) -> dict[str, Any]:
        def peak(memory: Memory, call: str | None) -> dict[str, Any]:
            at = memory.peak_at
            return {
                "peak_bytes": memory.peak_bytes,
                "peak_at": {**at.to_dict(), "step": memory.peak_step, "name": call},
                "at_peak": {kind.value: size for kind, size in memory.at_peak.items()},
            }

        return {"old": peak(self.old, self.old_call), "new": peak(self.new, self.new_call)}


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
        memory: The training step's peak, where both reports measured one
            and it changed; None otherwise.
        ddp_waiting_added: The DDPs of a recorded step that had not finished
            reducing (:attr:`Report.ddp_waiting`) in the new report only, by
            name (``""``: the one around the model).
        ddp_waiting_removed: Those in the old report only.
        ddp_built: What the DDP of a recorded step registered when it was built,
            where that was not what it would register now
            (:attr:`Report.ddp_built`), in each report (old, new), where that
            differs; None otherwise.
    """

    old_target: str
    new_target: str
    notes: tuple[DiffNote, ...]
    calls: tuple[CallChange | Gap, ...]
    params: tuple[ParamChange, ...]
    external_added: tuple[str, ...]
    external_removed: tuple[str, ...]
    memory: PeakChange | None = None
    ddp_waiting_added: tuple[str, ...] = ()
    ddp_waiting_removed: tuple[str, ...] = ()
    ddp_built: tuple[DdpBuilt | None, DdpBuilt | None] | None = None

    @property
    def ddp_changed(self) -> bool:
        """Whether what a recorded step's DDP did (beyond each parameter) changed."""
        return bool(self.ddp_waiting_added or self.ddp_waiting_removed or self.ddp_built)

    @property
    def calls_changed(self) -> bool:
        return any(isinstance(c, CallChange) and c.op is not DiffOp.SAME for c in self.calls)

    @property
    def equivalent(self) -> bool:
        return not (
            self.calls_changed
            or self.params
            or self.external_added
            or self.external_removed
            or self.memory is not None
            or self.ddp_changed
        )

    def counts(self) -> dict[str, int]:
        calls = [c for c in self.calls if isinstance(c, CallChange)]
        return {
            "calls_added": sum(c.op is DiffOp.ADDED and not c.moved for c in calls),
            "calls_removed": sum(c.op is DiffOp.REMOVED and not c.moved for c in calls),
            "calls_moved": sum(c.op is DiffOp.ADDED and c.moved for c in calls),
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
            "notes": [note.message for note in self.notes],
            "counts": self.counts(),
            "calls": [c.to_dict() for c in self.calls],
            "params": [p.to_dict() for p in self.params],
            "external_added": list(self.external_added),
            "external_removed": list(self.external_removed),
            "memory": None if self.memory is None else self.memory.to_dict(),
            **self._ddp_dict(),
        }

    def _ddp_dict(self) -> dict[str, Any]:
        """The recorded steps' DDP changes, each only where there is one."""
        data: dict[str, Any] = {}
        if self.ddp_waiting_added:
            data["ddp_waiting_added"] = list(self.ddp_waiting_added)
        if self.ddp_waiting_removed:
            data["ddp_waiting_removed"] = list(self.ddp_waiting_removed)
        if self.ddp_built is not None:
            old, new = (None if b is None else b.to_dict() for b in self.ddp_built)
            data["ddp_built"] = {"old": old, "new": new}
        return data


def _became(old: ParamStatus, new: ParamStatus) -> ChangeKind:
    if new is ParamStatus.USED:
        return ChangeKind.BECAME_LIVE if old is ParamStatus.DEAD else ChangeKind.USED_AGAIN
    return ChangeKind.BECAME_DEAD if new is ParamStatus.DEAD else ChangeKind.BECAME_UNUSED


def _align_calls(old: Report, new: Report, context: int) -> tuple[CallChange | Gap, ...]:
    """An aligned diff of the module forward orders, with ``context`` calls around changes."""
    old_keys = [(c.name, c.type) for c in old.modules]
    new_keys = [(c.name, c.type) for c in new.modules]
    ops = opcodes(old_keys, new_keys)
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
                CallChange(
                    DiffOp.REMOVED, call.name, call.type, call.depth, i, None, old_keys[i] in moved
                )
            )
        for j in range(j1, j2):
            call = new.modules[j]
            lines.append(
                CallChange(
                    DiffOp.ADDED, call.name, call.type, call.depth, None, j, new_keys[j] in moved
                )
            )
    return tuple(lines)


def _same(old: Report, new: Report, i: int, j: int) -> CallChange:
    call = new.modules[j]
    return CallChange(DiffOp.SAME, call.name, call.type, call.depth, i, j)


def _param_changes(old: Report, new: Report) -> list[ParamChange]:
    olds = {p.name: p for p in old.all_params()}
    news = {p.name: p for p in new.all_params()}
    sources = (_Sources.of(old), _Sources.of(new))
    ignored = (set(old.ddp_ignored), set(new.ddp_ignored))
    unreduced = (set(old.ddp_unreduced), set(new.ddp_unreduced))
    changes: list[ParamChange] = []
    for name, param in olds.items():
        if name not in news:
            changes.append(ParamChange(name, ChangeKind.REMOVED, param.status.value, None))
    for name, param in news.items():
        before = olds.get(name)
        if before is None:
            changes.append(ParamChange(name, ChangeKind.ADDED, None, param.status.value))
            continue
        if before.status is not param.status:
            what = _became(before.status, param.status)
            changes.append(ParamChange(name, what, before.status.value, param.status.value))
        if before.shape != param.shape:
            changes.append(
                ParamChange(
                    name, ChangeKind.SHAPE, shape_text(before.shape), shape_text(param.shape)
                )
            )
        if before.dtype != param.dtype:
            changes.append(ParamChange(name, ChangeKind.DTYPE, before.dtype, param.dtype))
        if before.rests_on_assumption != param.rests_on_assumption:
            kind = (
                ChangeKind.ON_ASSUMPTION if param.rests_on_assumption else ChangeKind.OFF_ASSUMPTION
            )
            changes.append(ParamChange(name, kind, _proof(before), _proof(param)))
        if before.requires_grad != param.requires_grad:
            kind = ChangeKind.BECAME_TRAINABLE if param.requires_grad else ChangeKind.BECAME_FROZEN
            changes.append(ParamChange(name, kind, _trainable(before), _trainable(param)))
        elif before.gets_gradient and param.gets_gradient:
            changes += _gradient_changes(name, *sources)
        if param.requires_grad and (name in ignored[0]) != (now := name in ignored[1]):
            # DDP neither waits for an ignored parameter nor all-reduces its gradient.
            kind = ChangeKind.DDP_IGNORED if now else ChangeKind.DDP_WAITS
            was = "ignored" if name in ignored[0] else "waited for"
            changes.append(ParamChange(name, kind, was, "ignored" if now else "waited for"))
        if (name in unreduced[0]) != (now := name in unreduced[1]):
            # static_graph's first step all-reduced before its gradient came: never reduced.
            kind = ChangeKind.ON_DDP_UNREDUCED if now else ChangeKind.OFF_DDP_UNREDUCED
            was = "unreduced" if name in unreduced[0] else "reduced"
            changes.append(ParamChange(name, kind, was, "unreduced" if now else "reduced"))
    changes.extend(_order_changes([p.name for p in old.params], [p.name for p in new.params]))
    if old.backward is not None and new.backward is not None:
        changes.extend(_order_changes(old.backward, new.backward, ChangeKind.BACKWARD_MOVED))
    return changes


def _trainable(param: ParamInfo) -> str:
    return "trainable" if param.requires_grad else "frozen"


@dataclass(frozen=True, slots=True)
class _Sources:
    """Where a report's parameters get their gradients from, by name, looked up once."""

    passes: Mapping[str, int]
    by_backwards: frozenset[str]  # passes from several backward calls of the caller's own
    recompute_only: frozenset[str]
    elsewhere: frozenset[str]  # only through outputs other than the main one
    main: str | None  # the main output, when several carry a gradient

    @classmethod
    def of(cls, report: Report) -> _Sources:
        reach = report.output_reach
        return cls(
            report.split_gradients,
            frozenset(report.split_by_backwards),
            frozenset(report.recompute_only),
            frozenset(report.findings(Category.OUTPUTS)),
            None if reach is None else reach.main,
        )

    def source(self, name: str) -> str:
        return "recompute only" if name in self.recompute_only else "backward"

    def split(self, name: str) -> str:
        if name in self.by_backwards:
            return "several backward calls"
        return "several passes" if self.passes.get(name, 1) > 1 else "one pass"

    def reach(self, name: str) -> str:
        if self.main is None:
            return "every output"
        return "other outputs" if name in self.elsewhere else f"main output ({self.main})"


def _gradient_changes(name: str, old: _Sources, new: _Sources) -> list[ParamChange]:
    """How a parameter that gets a gradient in both reports gets it, where that changed:
    in how many backward passes, from the backward or only a recompute, from which outputs.
    Each decides whether DDP (or FSDP2) runs, as its status does."""
    changes = []
    passes = (old.passes.get(name, 1), new.passes.get(name, 1))
    if passes[0] != passes[1]:
        changes.append(ParamChange(name, ChangeKind.PASSES, str(passes[0]), str(passes[1])))
    if (name in old.by_backwards) != (now := name in new.by_backwards):
        kind = ChangeKind.ON_SPLIT_BY_BACKWARDS if now else ChangeKind.OFF_SPLIT_BY_BACKWARDS
        changes.append(ParamChange(name, kind, old.split(name), new.split(name)))
    if (name in old.recompute_only) != (now := name in new.recompute_only):
        kind = ChangeKind.ON_RECOMPUTE_ONLY if now else ChangeKind.OFF_RECOMPUTE_ONLY
        changes.append(ParamChange(name, kind, old.source(name), new.source(name)))
    if (name in old.elsewhere) != (now := name in new.elsewhere):
        kind = ChangeKind.ON_OTHER_OUTPUTS if now else ChangeKind.OFF_OTHER_OUTPUTS
        changes.append(ParamChange(name, kind, old.reach(name), new.reach(name)))
    return changes


def _proof(param: ParamInfo) -> str:
    return "on assumption" if param.rests_on_assumption else "observed"


def _order_changes(
    old_names: Sequence[str], new_names: Sequence[str], kind: ChangeKind = ChangeKind.MOVED
) -> list[ParamChange]:
    """Parameters in both orders (first use, or the gradients'), by name, whose place changed."""
    common = set(old_names) & set(new_names)
    old_order = [n for n in old_names if n in common]
    new_order = [n for n in new_names if n in common]
    if old_order == new_order:
        return []
    kept = {old_order[i] for i, _ in matches(old_order, new_order)}
    old_pos = {n: i for i, n in enumerate(old_names)}
    new_pos = {n: i for i, n in enumerate(new_names)}
    return [
        ParamChange(name, kind, f"#{old_pos[name]}", f"#{new_pos[name]}")
        for name in new_order
        if name not in kept
    ]


def _external(report: Report) -> set[str]:
    return set(report.findings(Category.EXTERNAL))


def diff_reports(old: Report, new: Report, *, context: int = 2) -> ReportDiff:
    """Compare two reports.

    Args:
        old: The baseline.
        new: The report to check against it.
        context: Unchanged calls shown around each change in the module diff.

    Returns:
        The differences; ``equivalent`` is True when there are none.
    """
    notes = _model_notes(old, new)
    if dict(old.concrete_args) != dict(new.concrete_args):
        notes.append(DiffNote(DiffNoteKind.CONCRETE_ARGS, old.concrete_args, new.concrete_args))
    if old.mode != new.mode:
        notes.append(DiffNote(DiffNoteKind.MODES, old.mode, new.mode))
    if None not in (old.seed, new.seed) and old.seed != new.seed:
        notes.append(DiffNote(DiffNoteKind.SEEDS, old.seed, new.seed))
    if old.inputs and new.inputs and dict(old.inputs) != dict(new.inputs):
        notes.append(DiffNote(DiffNoteKind.INPUTS, dict(old.inputs), dict(new.inputs)))
    old_ext, new_ext = _external(old), _external(new)
    setups = (_setup(old.memory), _setup(new.memory))
    if setups[0] != setups[1]:
        notes.append(DiffNote(DiffNoteKind.MEMORY, *setups))
    return ReportDiff(
        old_target=old.target,
        new_target=new.target,
        notes=tuple(notes),
        calls=_align_calls(old, new, context),
        params=tuple(_param_changes(old, new)),
        external_added=tuple(sorted(new_ext - old_ext)),
        external_removed=tuple(sorted(old_ext - new_ext)),
        memory=_peak_change(old, new),
        ddp_waiting_added=tuple(n for n in new.ddp_waiting if n not in old.ddp_waiting),
        ddp_waiting_removed=tuple(n for n in old.ddp_waiting if n not in new.ddp_waiting),
        ddp_built=None if old.ddp_built == new.ddp_built else (old.ddp_built, new.ddp_built),
    )


def _setup(memory: Memory | None) -> dict[str, Any] | None:
    """How a report's training step was measured, where that decides its peak (not the
    device: meta measures what CPU does); None where it was not measured."""
    if memory is None:
        return None
    return {
        "optimizer": memory.optimizer,
        "foreach": memory.foreach,
        "world_size": memory.world_size,
    }


def _peak_change(old: Report, new: Report) -> PeakChange | None:
    """The peaks of both reports' training steps, where both measured one and they differ."""
    if old.memory is None or new.memory is None:
        return None
    if old.memory.peak_bytes == new.memory.peak_bytes:
        return None
    return PeakChange(old.memory, new.memory, _call_name(old), _call_name(new))


def _call_name(report: Report) -> str | None:
    assert report.memory is not None
    call = report.memory.peak_at.call
    return report.modules[call].name if call is not None and call < len(report.modules) else None


def _model_notes(old: Report, new: Report) -> list[DiffNote]:
    """Whether the reports are of different targets, or look like different models."""
    notes = []
    if old.target != new.target:
        notes.append(DiffNote(DiffNoteKind.TARGETS, old.target, new.target))
    old_root, new_root = old.modules[0].type, new.modules[0].type
    old_names = {p.name for p in old.all_params()}
    new_names = {p.name for p in new.all_params()}
    shared = len(old_names & new_names)
    larger = max(len(old_names), len(new_names))
    if old_root != new_root:
        notes.append(DiffNote(DiffNoteKind.ROOTS, old_root, new_root))
    elif larger and shared * 2 < larger:
        notes.append(DiffNote(DiffNoteKind.NAMES, shared, larger))
    return notes
