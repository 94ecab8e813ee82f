"""Views of reports, diffs, sweeps and DDP explanations: the one place wording lives."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from execorder.analysis import (
    CallChange,
    DdpExplanation,
    DiffOp,
    Gap,
    ReportDiff,
    SweepClass,
    SweepParam,
    SweepReport,
)
from execorder.analysis.fsdp import FsdpPlan
from execorder.analysis.ranks import RankComparison
from execorder.output.view import (
    Block,
    Cell,
    Column,
    ColumnKind,
    Document,
    Fold,
    Listing,
    Message,
    Node,
    Row,
    Severity,
    Span,
    Table,
    Tone,
    Tree,
    cell,
    code,
    label,
    plural,
)
from execorder.report import (
    Category,
    ModuleCall,
    ParamInfo,
    ParamStatus,
    Report,
    shape_text,
    size_text,
)

NUMBER, FIXED, NAME, TEXT = ColumnKind.NUMBER, ColumnKind.FIXED, ColumnKind.NAME, ColumnKind.TEXT
SHOW_ALL = "--max-rows 0 shows all"
OWN_PARAMS_SHOWN = 6  # local names listed in "own parameters used" before "+N more"


def _args(args: Mapping[str, object]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items())


def _cut(
    rows: Sequence[Row], max_rows: int | None, what: str
) -> tuple[tuple[Row, ...], tuple[str, ...]]:
    """At most ``max_rows`` rows (None or 0: all), and the line saying how many were left out."""
    if not max_rows or len(rows) <= max_rows:
        return tuple(rows), ()
    return tuple(rows[:max_rows]), (f"{plural(len(rows) - max_rows, f'more {what}')} ({SHOW_ALL})",)


# -- a report -----------------------------------------------------------------


def report_view(
    report: Report, *, depth: int | None = None, max_rows: int | None = None
) -> Document:
    """Everything a trace found: the summary first, then findings, then the orders.

    Args:
        report: The report.
        depth: Leave out module calls nested deeper than this.
        max_rows: At most this many rows per table (None or 0: all).
    """
    blocks: list[Block] = [
        _summary(report),
        _modules(report.modules, depth=depth, max_rows=max_rows),
        _param_order(report.params, max_rows=max_rows),
        _unused(report.unused, max_rows=max_rows),
        _dead(report.dead, max_rows=max_rows),
    ]
    if report.assumptions:
        blocks += _assumptions(report, max_rows=max_rows)
    if report.external:
        blocks.append(_external(report))
    if report.backward is not None:
        blocks.append(_backward(report, max_rows=max_rows))
    if report.timing is not None:
        blocks.append(slowest(report))
    title = cell("execorder: ", code(report.target), f" ({report.mode} trace)")
    return Document(title, tuple(blocks))


SLOWEST = 10  # modules in the timing table


def slowest(report: Report, count: int = SLOWEST) -> Table:
    """The modules that took longest in forward, by self time (their calls summed)."""
    assert report.timing is not None
    totals: dict[str, list[Any]] = {}
    for call, times in zip(report.modules, report.timing.calls, strict=True):
        entry = totals.setdefault(call.name, [call.type, 0, 0.0, 0.0])
        entry[1] += 1
        entry[2] += times.self_us
        # A module called inside itself is counted once in its total.
        if not any(report.modules[a].name == call.name for a in _ancestors(report, call.index)):
            entry[3] += times.total_us
    ranked = sorted(totals.items(), key=lambda item: -item[1][2])[:count]
    forward = report.timing.calls[0].total_us
    rows = tuple(
        Row(
            (
                cell(code(label(name))),
                cell(kind),
                cell(f"{calls:,}"),
                cell(time_text(own)),
                cell(f"{own / forward:.0%}" if forward else "-"),
                cell(time_text(total)),
            )
        )
        for name, (kind, calls, own, total) in ranked
    )
    columns = (
        Column("module", NAME),
        Column("type", FIXED),
        Column("calls", NUMBER),
        Column("self", NUMBER),
        Column("of forward", NUMBER),
        Column("total", NUMBER),
    )
    title = (
        f"Slowest modules, by self time ({report.timing.clock} clock; forward took "
        f"{time_text(forward)})"
    )
    return Table(title, columns, rows)


def _ancestors(report: Report, index: int) -> list[int]:
    found, parent = [], report.modules[index].parent
    while parent is not None:
        found.append(parent)
        parent = report.modules[parent].parent
    return found


def _fact(name: str, value: str | Cell, severity: Severity = Severity.NONE) -> Row:
    return Row((cell(name), value if isinstance(value, Cell) else cell(value)), severity)


def _warn_if(count: int) -> Severity:
    return Severity.WARNING if count else Severity.NONE


def ddp_verdict(report: Report) -> Row:
    """Whether DDP (``find_unused_parameters=False``) gets a gradient for every parameter.

    Never "ok" on an assumption: when the status of a trainable parameter
    rests on one (a meta run's routing), a step that routes otherwise can
    leave it without a gradient.
    """
    missing = report.summary.params_no_grad
    resting = len(report.findings(Category.ASSUMPTION))
    if report.no_use_seen:
        text = (
            "not proven: no parameter was seen used while forward ran; either forward reads "
            f"none of its {plural(report.summary.params_total, 'parameter')} (then DDP fails), "
            "or it reads copies of them that execorder does not see"
        )
        return _fact("DDP check", text, Severity.ERROR)
    if missing:
        verb = "gets" if missing == 1 else "get"
        text = f"fails: {plural(missing, 'trainable parameter')} {verb} no gradient"
        return _fact("DDP check", text, Severity.ERROR)
    if resting:
        rest = "rests" if resting == 1 else "rest"
        text = (
            f"not proven: {plural(resting, 'trainable parameter')} {rest} on an assumption "
            "(below); a step that selects otherwise (a router sending no token to an expert) "
            "can leave one without a gradient"
        )
        return _fact("DDP check", text, Severity.WARNING)
    return _fact("DDP check", "ok: every trainable parameter gets a gradient", Severity.OK)


def assumptions_fact(report: Report) -> Row:
    """What a meta run assumed, in one line: how many selections, where, and what rests on them."""
    made = report.assumptions
    count = sum(a.count for a in made)
    places = list(dict.fromkeys(f"{a.op} at {a.where}" if a.where else a.op for a in made))
    shown = ", ".join(places[:2]) + (f", +{len(places) - 2} more" if len(places) > 2 else "")
    rest = "rests" if report.summary.params_on_assumption == 1 else "rest"
    keep = "keeps" if count == 1 else "keep"
    text = (
        f"{plural(count, 'selection')} {keep} every element ({shown}); "
        f"{plural(report.summary.params_on_assumption, 'parameter')} {rest} on this"
    )
    return _fact("assumed on meta", text, Severity.WARNING)


def _summary(report: Report) -> Table:
    s = report.summary
    rows = [_fact("target", cell(code(report.target))), _fact("mode", str(report.mode))]
    if report.concrete_args:
        rows.append(_fact("concrete args", _args(report.concrete_args)))
    if report.defaults:
        rows.append(_fact("defaults used", _args(report.defaults)))
    if report.inputs:
        rows.append(_fact("inputs", ", ".join(f"{k}={v}" for k, v in report.inputs.items())))
    if report.seed is not None:
        rows.append(_fact("seed", str(report.seed)))
    rows.append(_fact("module calls", f"{s.calls:,} ({plural(s.modules, 'distinct module')})"))
    frozen = f" ({s.params_frozen:,} frozen)" if s.params_frozen else ""
    rows.append(_fact("parameters used", f"{s.params_used:,} of {s.params_total:,}{frozen}"))
    unused = f"{s.params_unused:,} ({plural(s.numel_unused, 'element')}, {s.unused_fraction:.1%})"
    rows.append(_fact("unused", unused, _warn_if(s.params_unused)))
    rows.append(_fact("dead (used, no gradient)", f"{s.params_dead:,}", _warn_if(s.params_dead)))
    if s.params_assumed:
        rows.append(_fact("assumed used (opaque leaves)", f"{s.params_assumed:,}"))
    if s.external_uses:
        rows.append(_fact("external uses", f"{s.external_uses:,}", Severity.WARNING))
    if report.assumptions:
        rows.append(assumptions_fact(report))
    rows.append(ddp_verdict(report))
    return Table("Summary", (Column(""), Column("", NAME)), tuple(rows), header=False)


def _own_params(call: ModuleCall) -> str:
    """Local names of the parameters a call used itself (not through a child)."""
    prefix = f"{call.name}." if call.name else ""
    names = list(
        dict.fromkeys(
            p.removeprefix(prefix) for g in call.uses if g.module == call.name for p in g.params
        )
    )
    if len(names) > OWN_PARAMS_SHOWN:
        more = len(names) - OWN_PARAMS_SHOWN + 1
        names = [*names[: OWN_PARAMS_SHOWN - 1], f"+{more} more"]
    return ", ".join(names)


def module_cell(call: ModuleCall) -> Cell:
    """A module call: its name, its other names, and which call of it this is."""
    parts: list[str | Span] = [code(label(call.name))]
    if call.aliases:
        parts.append(Span(" = " + ", ".join(call.aliases), Tone.MUTED))
    if call.repeat:
        parts.append(Span(f"  (call {call.repeat + 1})", Tone.ACCENT))
    return cell(*parts, indent=call.depth)


def _modules(calls: Sequence[ModuleCall], *, depth: int | None, max_rows: int | None) -> Table:
    shown = [c for c in calls if depth is None or c.depth <= depth]
    rows = [
        Row((cell(str(c.index)), module_cell(c), cell(c.type), cell(_own_params(c)))) for c in shown
    ]
    kept, left_out = _cut(rows, max_rows, "call")
    if len(shown) < len(calls):
        deeper = plural(len(calls) - len(shown), "call")
        left_out = (f"{deeper} nested deeper than {depth} hidden", *left_out)
    columns = (
        Column("#", NUMBER),
        Column("module", NAME),
        Column("type", NAME),
        Column("own parameters used", TEXT),
    )
    title = f"Module forward order ({plural(len(calls), 'call')})"
    return Table(title, columns, kept, left_out, fold=Fold.ALWAYS)


def param_cell(param: ParamInfo) -> Cell:
    """A parameter's name and its other (tied) names."""
    if param.aliases:
        return cell(code(param.name), Span(" = " + ", ".join(param.aliases), Tone.MUTED))
    return cell(code(param.name))


def status_cell(param: ParamInfo) -> Cell:
    """What is special about a parameter: dead, frozen, assumed, resting on an assumption."""
    return _marks(
        (param.dead, "dead", Tone.ERROR),
        (not param.requires_grad, "frozen", Tone.INFO),
        (param.assumed, "assumed", Tone.MUTED),
        (param.rests_on_assumption, "on assumption", Tone.WARN),
    )


def _marks(*marks: tuple[bool, str, Tone]) -> Cell:
    """The words whose flag is set, comma-separated, each in its tone."""
    spans: list[str | Span] = []
    for flag, word, tone in marks:
        if flag:
            spans += [", " if spans else "", Span(word, tone)]
    return cell(*spans)


def first_use(param: ParamInfo) -> str:
    """``#N`` when the parameter's own module first used it, else ``#N module``."""
    if param.first_module == param.owner:
        return f"#{param.first_call}"
    return f"#{param.first_call} {label(param.first_module or '')}"


def _param_table(
    title: str,
    params: Sequence[ParamInfo],
    last: tuple[str, Callable[[ParamInfo], str]],
    *,
    what: str = "parameter",
    numbered: bool = False,
    status: bool = True,
    max_rows: int | None,
    fold: Fold = Fold.LONG,
) -> Table:
    heading, value = last
    status = status and any(status_cell(p).spans for p in params)
    columns = [Column("parameter", NAME), Column("shape", FIXED), Column("numel", NUMBER)]
    columns.append(Column(heading, TEXT))
    if numbered:
        columns.insert(0, Column("#", NUMBER))
    if status:
        columns.append(Column("status", FIXED))
    rows = []
    for i, param in enumerate(params):
        cells = [param_cell(param), cell(shape_text(param.shape)), cell(f"{param.numel:,}")]
        cells.append(cell(value(param)))
        if numbered:
            cells.insert(0, cell(str(i)))
        if status:
            cells.append(status_cell(param))
        rows.append(Row(tuple(cells)))
    kept, left_out = _cut(rows, max_rows, what)
    return Table(title, tuple(columns), kept, left_out, fold=fold)


def _param_order(params: Sequence[ParamInfo], *, max_rows: int | None) -> Table:
    return _param_table(
        f"Parameter forward order, by first use ({plural(len(params), 'parameter')})",
        params,
        ("first use", first_use),
        numbered=True,
        max_rows=max_rows,
        fold=Fold.ALWAYS,
    )


def _unused(unused: Sequence[ParamInfo], *, max_rows: int | None) -> Block:
    if not unused:
        return Message(cell("No unused parameters."), Severity.OK)
    owner = ("owner", lambda p: label(p.owner))
    return _param_table(f"Unused parameters ({len(unused):,})", unused, owner, max_rows=max_rows)


def _dead(dead: Sequence[ParamInfo], *, max_rows: int | None) -> Block:
    if not dead:
        return Message(cell("No dead parameters: every use reaches an output."), Severity.OK)
    return _param_table(
        f"Dead parameters, with no gradient ({len(dead):,})",
        dead,
        ("first use", first_use),
        status=False,
        max_rows=max_rows,
    )


def _assumptions(report: Report, *, max_rows: int | None) -> tuple[Table, Message]:
    rows = [
        Row(
            (
                cell(f"#{a.call} ", code(label(a.module))),
                cell(a.op),
                cell(a.where),
                cell(f"{a.count:,}"),
            )
        )
        for a in report.assumptions
    ]
    kept, left_out = _cut(rows, max_rows, "assumption")
    note = cell(
        "On meta, a selection made from values computed from parameters (a router's choice) "
        "cannot be known: each was assumed to keep every element. The parameters marked "
        "'on assumption' may fare otherwise in a real step."
    )
    columns = (
        Column("call", NAME),
        Column("op", FIXED),
        Column("where", FIXED),
        Column("times", NUMBER),
    )
    title = f"Assumed on meta: every element kept ({len(rows):,})"
    return Table(title, columns, kept, left_out), Message(note, Severity.WARNING)


def _external(report: Report) -> Table:
    rows = tuple(
        Row((cell(code(u.param)), cell(label(u.owner)), cell(f"#{u.call} {label(u.used_by)}")))
        for u in report.external
    )
    columns = (Column("parameter", NAME), Column("owner", NAME), Column("used by", NAME))
    title = f"External uses, owner not running ({len(rows):,})"
    return Table(title, columns, rows)


def _backward(report: Report, *, max_rows: int | None) -> Table:
    order = report.backward or ()
    forward = {p.name: i for i, p in enumerate(report.params)}
    rows = [
        Row((cell(str(i)), cell(code(name)), cell(str(forward.get(name, "")))))
        for i, name in enumerate(order)
    ]
    kept, left_out = _cut(rows, max_rows, "parameter")
    columns = (Column("#", NUMBER), Column("parameter", NAME), Column("forward #", NUMBER))
    title = f"Backward order, by gradient accumulation ({plural(len(order), 'parameter')})"
    return Table(title, columns, kept, left_out, fold=Fold.ALWAYS)


# -- a diff -------------------------------------------------------------------

_COUNT_WORDS = {
    "calls_added": ("call added", "calls added"),
    "calls_removed": ("call removed", "calls removed"),
    "calls_moved": ("call moved", "calls moved"),
    "params_changed": ("param changed", "params changed"),
    "external_added": ("external use added", "external uses added"),
    "external_removed": ("external use removed", "external uses removed"),
}
_OP_SIGNS = {
    DiffOp.SAME: (" ", Tone.MUTED),
    DiffOp.REMOVED: ("-", Tone.ERROR),
    DiffOp.ADDED: ("+", Tone.OK),
}


def diff_line(line: CallChange | Gap) -> Cell:
    """One line of the aligned module-order diff, its sign first."""
    if isinstance(line, Gap):
        return cell(Span(f"  … {plural(line.count, 'unchanged call')}", Tone.MUTED))
    sign, tone = _OP_SIGNS[line.op]
    text = f"{sign} {'  ' * line.depth}{label(line.name)}  [{line.type}]"
    parts = [Span(text, tone)]
    if line.moved:
        parts.append(Span("  (moved)", Tone.ACCENT))
    return Cell(tuple(parts))


def diff_view(diff: ReportDiff) -> Document:
    """Verdict, notes, the aligned module-order diff, then parameter and external changes."""
    blocks: list[Block] = []
    if diff.equivalent:
        verdict = cell("No change: ", code(diff.new_target), " runs as in the baseline.")
        blocks.append(Message(verdict, Severity.OK))
    else:
        counts = diff.counts()
        changed = ", ".join(f"{n:,} {_COUNT_WORDS[key][n != 1]}" for key, n in counts.items() if n)
        blocks.append(Message(cell(f"Changed: {changed}"), Severity.WARNING))
    blocks += [Message(cell(Span(f"note: {note}", Tone.MUTED))) for note in diff.notes]
    if diff.calls_changed:
        blocks.append(Listing("Module forward order", tuple(diff_line(c) for c in diff.calls)))
    if diff.params:
        rows = tuple(
            Row((cell(code(p.name)), cell(str(p.what)), cell(p.old or ""), cell(p.new or "")))
            for p in diff.params
        )
        columns = (
            Column("parameter", NAME),
            Column("change", FIXED),
            Column("old", FIXED),
            Column("new", FIXED),
        )
        blocks.append(Table(f"Parameter changes ({len(rows):,})", columns, rows))
    if diff.external_added or diff.external_removed:
        rows = tuple(
            [Row((cell(Span("added", Tone.ERROR)), cell(u))) for u in diff.external_added]
            + [Row((cell(Span("removed", Tone.OK)), cell(u))) for u in diff.external_removed]
        )
        blocks.append(Table("External uses", (Column("", FIXED), Column("use", NAME)), rows))
    title = cell("execorder diff: ", code(diff.new_target))
    return Document(title, tuple(blocks))


# -- a sweep ------------------------------------------------------------------


def _combinations(indices: Sequence[int]) -> str:
    return ", ".join(f"#{i}" for i in indices) or "none"


def _with_marks(
    title: str, columns: tuple[Column, ...], params: Sequence[SweepParam], cells: Any, **opts: Any
) -> Table:
    """A table of a sweep's parameters, with a status column when one is frozen or assumed."""
    marked = any(not p.requires_grad or p.assumed_in for p in params)
    rows = []
    for p in params:
        mark = _marks(
            (not p.requires_grad, "frozen", Tone.INFO),
            (bool(p.assumed_in), "on assumption", Tone.WARN),
        )
        rows.append(Row((*cells(p), mark) if marked else tuple(cells(p))))
    if marked:
        columns = (*columns, Column("status", FIXED))
    return Table(title, columns, tuple(rows), **opts)


def sweep_view(sweep: SweepReport) -> Document:
    """The combinations, then the parameters by where they are used and given gradients.

    Findings come first: branch-dependent parameters (used or given a
    gradient in some combinations only), never used, used but never given a
    gradient; the parameters used and given a gradient everywhere are folded.
    """
    combos = tuple(
        Row(
            (
                cell(str(i)),
                cell(_args(c.args)),
                cell(f"{c.calls:,}"),
                cell(f"{c.params_used:,}"),
                cell(f"{c.params_no_grad:,}"),
            )
        )
        for i, c in enumerate(sweep.combinations)
    )
    columns: tuple[Column, ...] = (
        Column("#", NUMBER),
        Column("combination", TEXT),
        Column("calls", NUMBER),
        Column("params used", NUMBER),
        Column("no gradient", NUMBER),
    )
    title = f"Sweep of {sweep.target} ({plural(len(combos), 'combination')})"
    blocks: list[Block] = [Table(title, columns, combos)]
    branch = [p for p in sweep.params if p.branch_dependent]
    if branch:
        rows = tuple(
            Row(
                (
                    cell(code(p.name)),
                    cell(_combinations(p.used_in)),
                    cell(_combinations(p.grad_in)),
                )
            )
            for p in branch
        )
        columns = (
            Column("parameter", NAME),
            Column("used in", TEXT),
            Column("gets a gradient in", TEXT),
        )
        title = (
            f"Branch-dependent: used or given a gradient in some combinations only ({len(rows):,})"
        )
        blocks.append(Table(title, columns, rows))
    else:
        line = cell(
            "No branch-dependent parameters: every combination uses the same ones "
            "and gives them the same gradients."
        )
        blocks.append(Message(line, Severity.OK))
    never = sweep.by_status(SweepClass.NEVER)
    if never:
        title = f"Never used ({len(never):,})"
        columns = (Column("parameter", NAME),)
        blocks.append(_with_marks(title, columns, never, lambda p: (cell(code(p.name)),)))
    dead = [n for n in sweep.findings("dead")]
    if dead:
        rows = tuple(Row((cell(code(name)),)) for name in dead)
        title = f"Used, but given no gradient in any combination ({len(rows):,})"
        blocks.append(Table(title, (Column("parameter", NAME),), rows))
    settled = set(dead) | {p.name for p in branch}
    always = [p for p in sweep.by_status(SweepClass.ALWAYS) if p.name not in settled]
    columns = (Column("parameter", NAME), Column("gets a gradient in", TEXT))
    blocks.append(
        _with_marks(
            f"Always used ({len(always):,})",
            columns,
            always,
            lambda p: (cell(code(p.name)), cell(_combinations(p.grad_in))),
            fold=Fold.ALWAYS,
        )
    )
    if sweep.external:
        rows = tuple(Row((cell(use),)) for use in sweep.external)
        title = f"External uses, in some combination ({len(rows):,})"
        blocks.append(Table(title, (Column("use", NAME),), rows))
    return Document(cell("execorder sweep: ", code(sweep.target)), tuple(blocks))


# -- DDP's indices ------------------------------------------------------------

_VERDICTS = {
    ParamStatus.DEAD: ("dead (no use reaches an output)", Severity.ERROR),
    ParamStatus.UNUSED: ("unused (never touched)", Severity.ERROR),
    ParamStatus.USED: ("used: expected a gradient", Severity.WARNING),
}


def ddp_view(explanation: DdpExplanation) -> Document:
    """DDP's parameter indices, named, each with execorder's verdict; then whether they agree."""
    rows = []
    for entry in explanation.indices:
        words, severity = _VERDICTS[entry.status]
        first = first_use(entry.param) if entry.param.used else ""
        cells = (cell(str(entry.index)), param_cell(entry.param), cell(first), cell(words))
        rows.append(Row(cells, severity))
    columns = (
        Column("index", NUMBER),
        Column("parameter", NAME),
        Column("first use", TEXT),
        Column("execorder says", TEXT),
    )
    blocks: list[Block] = [
        Table(f"DDP parameter indices for {explanation.target}", columns, tuple(rows))
    ]
    count = len(explanation.indices)
    if explanation.agrees:
        these = "this parameter" if count == 1 else f"these {count:,} parameters"
        blocks.append(Message(cell(f"execorder predicted exactly {these}."), Severity.OK))
    if explanation.not_named:
        names = ", ".join(p.name for p in explanation.not_named)
        line = cell("execorder also predicts no gradient for: ", code(names))
        blocks.append(Message(line, Severity.WARNING))
    if any(e.status is ParamStatus.USED for e in explanation.indices):
        line = cell(
            "Some named parameters were expected to get a gradient: was the run traced with "
            "the same inputs, concrete arguments and init arguments as the one that failed?"
        )
        blocks.append(Message(line, Severity.WARNING))
    title = cell("DDP parameter indices for ", code(explanation.target))
    return Document(title, tuple(blocks))


# -- FSDP2 plans --------------------------------------------------------------


def _names(names: Sequence[str]) -> Cell:
    if not names:
        return cell(Span("(none)", Tone.MUTED))
    parts: list[str | Span] = []
    for i, name in enumerate(names):
        parts.extend((", " if i else "", code(label(name))))
    return cell(*parts)


def fsdp_view(plan: FsdpPlan) -> Document:
    """An FSDP2 plan: what was traced, the units with their prefetch lists, then the checks."""
    errors, warnings = plan.count(Severity.ERROR), plan.count(Severity.WARNING)
    facts = [_fact("target", cell(code(plan.target))), _fact("mode", plan.mode)]
    if plan.concrete_args:
        facts.append(_fact("concrete args", _args(plan.concrete_args)))
    if plan.combinations:
        facts.append(_fact("checked with", "; ".join(_args(c) for c in plan.combinations)))
    if plan.seed is not None:
        facts.append(_fact("seed", str(plan.seed)))
    largest = max(plan.units, key=lambda u: u.bytes)
    dtypes = ", ".join(dict.fromkeys(d for u in plan.units for d in u.bytes_by_dtype))
    facts += [
        _fact("units", f"{len(plan.units):,}, chosen by {plan.unit_rule}"),
        _fact(
            "parameters",
            f"{size_text(sum(u.bytes for u in plan.units))} ({dtypes or 'none'}), all-gathered "
            "unit by unit; the "
            f"largest unit, {label(largest.name)}, {size_text(largest.bytes)}",
        ),
        _fact(
            "prefetch",
            f"{plural(plan.prefetch, 'unit')} ahead; "
            + (
                "backward order from a real backward"
                if plan.backward_from == "recorded backward"
                else "backward order taken as reverse post-forward (--backward records it)"
            ),
        ),
    ]
    if errors:
        verdict = f"fails: {plural(errors, 'error')}, {plural(warnings, 'warning')} (below)"
        facts.append(_fact("FSDP2 check", verdict, Severity.ERROR))
    elif warnings:
        facts.append(
            _fact(
                "FSDP2 check", f"runs, with {plural(warnings, 'warning')} (below)", Severity.WARNING
            )
        )
    else:
        facts.append(
            _fact("FSDP2 check", "ok: nothing breaks sharding or prefetching", Severity.OK)
        )
    blocks: list[Block] = [
        Table("Summary", (Column(""), Column("", NAME)), tuple(facts), header=False)
    ]

    rows = []
    for index, unit in enumerate(plan.units):
        ran = unit.first_call is not None
        first = cell(
            f"{unit.first_call:,}" if ran else Span("never", Tone.WARN),
            Span(f" (x{unit.calls})", Tone.ACCENT) if unit.calls > 1 else "",
        )
        mixed = ", ".join(plan_dtypes(unit.bytes_by_dtype))
        rows.append(
            Row(
                (
                    cell(str(index)),
                    cell(code(label(unit.name)), Span(f" {unit.type}", Tone.MUTED)),
                    cell(f"{unit.params:,}"),
                    cell(size_text(unit.bytes), Span(f" ({mixed})", Tone.MUTED) if mixed else ""),
                    first,
                    _names(plan.forward_prefetch.get(unit.name, ())) if ran else cell(""),
                    _names(plan.backward_prefetch.get(unit.name, ())) if ran else cell(""),
                )
            )
        )
    columns = (
        Column("#", NUMBER),
        Column("unit", NAME),
        Column("params", NUMBER),
        Column("gathers", FIXED),
        Column("first call", FIXED),
        Column("forward prefetch", TEXT),
        Column("backward prefetch", TEXT),
    )
    blocks.append(Table("Units, in forward order", columns, tuple(rows)))

    if plan.checks:
        rows = [
            Row(
                (cell(str(c.severity)), cell(str(c.kind)), cell(c.message)),
                c.severity,
            )
            for c in plan.checks
        ]
        found = (Column("severity", FIXED), Column("check", FIXED), Column("finding", TEXT))
        blocks.append(Table(f"Checks ({len(rows):,})", found, tuple(rows)))
    else:
        line = cell(
            "No problems found: every unit runs, reads only its own parameters, and "
            "registration order is execution order."
        )
        blocks.append(Message(line, Severity.OK))
    return Document(cell("execorder fsdp: ", code(plan.target)), tuple(blocks))


def plan_dtypes(by_dtype: Mapping[str, int]) -> list[str]:
    """A unit's bytes by dtype, when it has several (one dtype is in the summary)."""
    if len(by_dtype) <= 1:
        return []
    return [f"{dtype} {size_text(size)}" for dtype, size in by_dtype.items()]


# -- across ranks -------------------------------------------------------------


def _ranks(ranks: Sequence[int]) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(map(str, ranks))


def ranks_view(result: RankComparison) -> Document:
    """Whether the ranks agree; if not, their groups, where they part, and what differs."""
    world = result.world_size
    facts = [_fact("target", cell(code(result.target))), _fact("world size", f"{world:,}")]
    if result.errors:
        verdict = (
            f"unknown: {plural(sum(len(g.ranks) for g in result.errors), 'rank')} could not record"
        )
        facts.append(_fact("ranks", verdict, Severity.ERROR))
    elif result.diverged:
        text = (
            f"diverged: {plural(len(result.groups), 'group')} of ranks ran different forwards; "
            "DDP and FSDP hang or fail on this"
        )
        facts.append(_fact("ranks", text, Severity.ERROR))
    else:
        text = (
            f"agree: all {plural(world, 'rank')} ran the same module calls, in the same order, "
            "and gave each parameter the same status"
        )
        facts.append(_fact("ranks", text, Severity.OK))
    facts.append(
        _fact("exchanged", f"{result.digest_bytes} bytes a rank; records from one rank a group")
    )
    blocks: list[Block] = [
        Table("Summary", (Column(""), Column("", NAME)), tuple(facts), header=False)
    ]
    if not result.diverged:
        return Document(cell("execorder ranks: ", code(result.target)), tuple(blocks))

    first = result.first_divergence
    rows = []
    for index, group in enumerate(result.groups):
        if group.error is not None:
            there = cell(Span(group.error, Tone.ERROR))
        elif first is None:
            there = cell(Span("(same calls)", Tone.MUTED))
        else:
            name = first.by_group[index]
            there = (
                cell(code(label(name))) if name is not None else cell(Span("(ended)", Tone.WARN))
            )
        rows.append(
            Row((cell(str(index)), cell(_ranks(group.ranks)), cell(f"{group.calls:,}"), there))
        )
    at = f"at call #{first.index:,}" if first is not None else "at the first difference"
    columns = (
        Column("group", NUMBER),
        Column("ranks", TEXT),
        Column("calls", NUMBER),
        Column(at, NAME),
    )
    blocks.append(Table("Groups of ranks that behaved alike", columns, tuple(rows)))
    if first is not None:
        parts: list[str | Span] = [f"First divergence, at module call #{first.index:,}: "]
        for index, name in enumerate(first.by_group):
            ranks = _ranks(result.groups[index].ranks)
            ran = f"ran {name}" if name is not None else "had ended"
            parts.append(("; " if index else "") + f"{ranks} {ran}")
        blocks.append(Message(cell(*parts), Severity.ERROR))
    if result.status_differs:
        by_group: tuple[Column, ...] = (
            Column("parameter", NAME),
            *(Column(f"group {i}", FIXED) for i in range(len(result.groups))),
        )
        status_rows = tuple(
            Row((cell(code(d.param)), *(cell(s or "-") for s in d.by_group)), Severity.NONE)
            for d in result.status_differs
        )
        title = f"Parameters whose status differs across ranks ({len(status_rows):,})"
        blocks.append(Table(title, by_group, status_rows))
    back = result.backward_divergence
    if back is not None:
        parts = [f"Gradient order (DDP's buckets) first differs at position {back.index:,}: "]
        for index, name in enumerate(back.by_group):
            parts.append(
                ("; " if index else "") + f"{_ranks(result.groups[index].ranks)}: {name or 'ended'}"
            )
        blocks.append(Message(cell(*parts), Severity.WARNING))
    return Document(cell("execorder ranks: ", code(result.target)), tuple(blocks))


# -- the call tree ------------------------------------------------------------

_INDEXED = re.compile(r"^(.*?)(\d+)$")


def time_text(us: float) -> str:
    """A duration in microseconds, as reports write it: ``85 µs``, ``1.2 ms``, ``3.40 s``."""
    if us >= 1e6:
        return f"{us / 1e6:.2f} s"
    if us >= 1e3:
        return f"{us / 1e3:.1f} ms"
    return f"{us:.0f} µs"


def _relative(name: str, parent: str) -> str:
    return name[len(parent) + 1 :] if parent and name.startswith(parent + ".") else name


def _runs(names: Sequence[str], keys: Sequence[object]) -> list[tuple[int, int]]:
    """Runs of siblings to fold: equal keys, names ``prefix.N`` with consecutive N."""
    runs, start = [], 0
    while start < len(names):
        end = start + 1
        first = _INDEXED.match(names[start])
        while first and end < len(names) and keys[end] == keys[start]:
            match = _INDEXED.match(names[end])
            if not match or match[1] != first[1] or int(match[2]) != int(first[2]) + end - start:
                break
            end += 1
        runs.append((start, end))
        start = end
    return runs


def tree_view(
    report: Report,
    *,
    depth: int | None = None,
    max_rows: int | None = None,
    plan: FsdpPlan | None = None,
) -> Document:
    """The module calls as a tree: nesting, own parameters used, marks; repeated blocks folded.

    Runs of sibling calls with identical subtrees (``layers.0`` to
    ``layers.79``, the same calls and uses inside) fold into one line, with
    the first one's subtree under it. Dead parameters are marked where they
    are used, unused ones on their module's first call, FSDP units (with a
    ``plan``) on their calls, and times (with ``timing``) on every call.
    """
    calls = report.modules
    kids: list[list[int]] = [[] for _ in calls]
    for call in calls:
        if call.parent is not None:
            kids[call.parent].append(call.index)
    dead = {p.name for p in report.dead}
    unused: dict[str, list[str]] = {}
    for param in report.unused:
        owner, _, local = param.name.rpartition(".")
        unused.setdefault(owner, []).append(local)
    units = {u.name: (i, u) for i, u in enumerate(plan.units)} if plan is not None else {}
    timing = report.timing

    # Each call's own uses (local name, dead?): part of its subtree's key and of its line.
    owns = [
        tuple(
            dict.fromkeys(
                (_relative(p, call.name), p in dead)
                for group in call.uses
                if group.module == call.name
                for p in group.params
            )
        )
        for call in calls
    ]

    # Each call's subtree, as a comparable key, children before parents.
    keys: list[object] = [None] * len(calls)
    for index in range(len(calls) - 1, -1, -1):
        call = calls[index]
        keys[index] = (
            call.type,
            owns[index],
            call.name in units,
            tuple((_relative(calls[k].name, call.name), keys[k]) for k in kids[index]),
        )

    def line(index: int, name: str, count: int) -> Cell:
        call = calls[index]
        parts: list[str | Span] = [code(label(name)), Span(f"  {call.type}", Tone.MUTED)]
        if count > 1:
            parts.append(Span(f" ×{count}, same calls", Tone.ACCENT))
        elif call.repeat:
            parts.append(Span(f"  (call {call.repeat + 1})", Tone.ACCENT))
        if call.name in units and call.repeat == 0:
            number, unit = units[call.name]
            parts.append(Span(f"  [unit {number}, gathers {size_text(unit.bytes)}]", Tone.INFO))
        used = owns[index]
        if used:
            parts.append("  ")
            for i, (local, is_dead) in enumerate(used):
                parts.append(", " if i else "")
                parts.append(Span(f"{local} (dead)", Tone.WARN) if is_dead else local)
        if call.repeat == 0 and count == 1 and unused.get(call.name):
            parts.append(Span(f"  unused: {', '.join(unused[call.name])}", Tone.WARN))
        if timing is not None and count == 1:
            times = timing.calls[index]
            parts.append(
                Span(
                    f"  {time_text(times.total_us)} (self {time_text(times.self_us)})",
                    Tone.MUTED,
                )
            )
        return cell(*parts)

    # Pre-order, with folding; then nodes bottom-up (no recursion: trees can be deep).
    items: list[tuple[int, str, int, int, int | None]] = []  # call, name, count, depth, parent
    hidden = cut = 0
    stack: list[tuple[int, str, int, int, int | None]] = [(0, calls[0].name, 1, 0, None)]
    while stack:
        index, name, count, level, parent = stack.pop()
        if max_rows and len(items) >= max_rows:
            cut += 1
            continue
        items.append((index, name, count, level, parent))
        me = len(items) - 1
        children = kids[index]
        if depth is not None and level >= depth:
            hidden += len(children)
            continue
        names = [calls[k].name for k in children]
        groups = []
        for start, end in _runs(names, [keys[k] for k in children]):
            shown = names[start] if end - start == 1 else _span_name(names[start], names[end - 1])
            groups.append((children[start], shown, end - start, level + 1, me))
        stack.extend(reversed(groups))
    below: list[list[Node]] = [[] for _ in items]
    nodes: list[Node | None] = [None] * len(items)
    for position in range(len(items) - 1, -1, -1):
        index, name, count, _, parent = items[position]
        nodes[position] = Node(line(index, name, count), tuple(reversed(below[position])))
        if parent is not None:
            below[parent].append(nodes[position])  # type: ignore[arg-type]
    left_out = []
    if hidden:
        left_out.append(f"{plural(hidden, 'call')} nested deeper than --depth {depth} not shown")
    if cut:
        left_out.append(f"{plural(cut, 'more line')} ({SHOW_ALL})")
    title = f"Module calls ({len(calls):,}), as a tree"
    blocks: list[Block] = [Tree(title, nodes[0], tuple(left_out))]  # type: ignore[arg-type]
    called = {c.name for c in calls}
    elsewhere = [p.name for p in report.unused if p.name.rpartition(".")[0] not in called]
    if elsewhere:
        shown = ", ".join(elsewhere[:5]) + (
            f" and {len(elsewhere) - 5} more" if len(elsewhere) > 5 else ""
        )
        blocks.append(
            Message(cell("Unused, in modules never called: ", code(shown)), Severity.WARNING)
        )
    return Document(cell("execorder tree: ", code(report.target)), tuple(blocks))


def _span_name(first: str, last: str) -> str:
    """``layers.0`` and ``layers.79`` as ``layers.0-79``."""
    return f"{first}-{_INDEXED.match(last)[2]}"  # type: ignore[index]
