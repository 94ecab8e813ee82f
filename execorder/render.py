"""Rich renderings of a :class:`~execorder.report.Report` (presentation only)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from execorder.ddp import DdpExplanation
from execorder.diff import CallChange, Gap, ReportDiff
from execorder.report import ExternalUse, ModuleCall, ParamInfo, Report
from execorder.sweep import NEVER, SOME, SweepReport

ROOT_LABEL = "(root)"


def _label(name: str) -> str:
    return name or ROOT_LABEL


def _shape(shape: Sequence[int]) -> str:
    return "×".join(str(d) for d in shape) or "scalar"


def _table(title: str, *columns: str, right: Sequence[str] = ()) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in columns:
        table.add_column(column, justify="right" if column in right else "left")
    return table


def _count(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def _hidden(text: str) -> Text:
    return Text(f"… {text}", style="dim")


def _cut(table: Table, rows: int, total: int, what: str) -> RenderableType:
    if rows < total:
        more = _count(total - rows, f"more {what}")
        return Group(table, _hidden(f"{more} (--max-rows 0 shows all)"), Text())
    return table


def render_summary(report: Report) -> Table:
    """Key facts: what was traced, what forward used, and the DDP verdict."""
    s = report.summary
    table = _table("Summary", "", "")
    table.show_header = False
    table.add_row("target", report.target)
    table.add_row("mode", report.mode)
    if report.concrete_args:
        args = ", ".join(f"{k}={v!r}" for k, v in report.concrete_args.items())
        table.add_row("concrete args", args)
    if report.inputs:
        table.add_row("inputs", ", ".join(f"{k}={v}" for k, v in report.inputs.items()))
    table.add_row("module calls", f"{s.calls:,} ({s.modules:,} distinct modules)")
    frozen = f" ({s.params_frozen:,} frozen)" if s.params_frozen else ""
    table.add_row("parameters used", f"{s.params_used:,} of {s.params_total:,}{frozen}")
    unused = f"{s.params_unused:,} ({s.numel_unused:,} elements, {s.unused_fraction:.1%})"
    table.add_row("unused", Text(unused, _warn(s.params_unused)))
    table.add_row("dead (used, no gradient)", Text(f"{s.params_dead:,}", _warn(s.params_dead)))
    if s.params_assumed:
        table.add_row("assumed used (opaque leaves)", f"{s.params_assumed:,}")
    if s.external_uses:
        table.add_row("external uses", Text(f"{s.external_uses:,}", _warn(s.external_uses)))
    if s.params_no_grad:
        verdict = Text(
            f"fails: {_count(s.params_no_grad, 'trainable parameter')} "
            f"{'gets' if s.params_no_grad == 1 else 'get'} no gradient",
            "bold red",
        )
    else:
        verdict = Text("ok: every trainable parameter gets a gradient", "green")
    table.add_row("DDP check", verdict)
    return table


def _warn(count: int) -> str:
    return "bold yellow" if count else ""


def _own_params(call: ModuleCall, limit: int = 48) -> str:
    """Local names of the parameters a call used itself (not through a child)."""
    prefix = f"{call.name}." if call.name else ""
    names = dict.fromkeys(
        p.removeprefix(prefix) for g in call.uses if g.module == call.name for p in g.params
    )
    text = ", ".join(names)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_modules(
    calls: Sequence[ModuleCall], *, depth: int | None = None, max_rows: int | None = None
) -> RenderableType:
    """The module forward order, indented by nesting, repeated calls marked."""
    table = _table(
        "Module forward order", "#", "module", "type", "own parameters used", right=("#",)
    )
    shown = [c for c in calls if depth is None or c.depth <= depth]
    rows = shown if not max_rows else shown[:max_rows]
    for call in rows:
        name = Text("  " * call.depth + _label(call.name))
        if call.aliases:
            name.append(" = " + ", ".join(call.aliases), style="dim")
        if call.call:
            name.append(f"  (call {call.call + 1})", style="cyan")
        table.add_row(str(call.index), name, call.type, _own_params(call))
    parts: list[RenderableType] = [table]
    if len(shown) < len(calls):
        deeper = _count(len(calls) - len(shown), "call")
        parts.append(_hidden(f"{deeper} nested deeper than {depth} hidden"))
    if len(rows) < len(shown):
        more = _count(len(shown) - len(rows), "more call")
        parts.append(_hidden(f"{more} (--max-rows 0 shows all)"))
    if len(parts) > 1:
        parts.append(Text())
    return Group(*parts)


def _param_name(param: ParamInfo) -> Text:
    text = Text(param.name)
    if param.aliases:
        text.append(" = " + ", ".join(param.aliases), style="dim")
    return text


def _status(param: ParamInfo) -> Text:
    """What is special about a parameter: dead, frozen, assumed."""
    text = Text()
    for flag, word, style in (
        (param.dead, "dead", "bold red"),
        (not param.requires_grad, "frozen", "blue"),
        (param.assumed, "assumed", "dim"),
    ):
        if flag:
            text.append(("  " if text else "") + word, style)
    return text


def _first_use(param: ParamInfo) -> str:
    """``#N`` when the owner itself first used it, else ``#N module``."""
    if param.first_module == param.owner:
        return f"#{param.first_call}"
    return f"#{param.first_call} {_label(param.first_module or '')}"


def _param_table(
    title: str,
    params: Sequence[ParamInfo],
    last: tuple[str, Callable[[ParamInfo], str | Text]],
    *,
    numbered: bool = False,
    status: bool = True,
    max_rows: int | None = None,
) -> RenderableType:
    heading, cell = last
    status = status and any(_status(p) for p in params)
    columns = ["parameter", "shape", "numel", heading]
    if numbered:
        columns.insert(0, "#")
    if status:
        columns.append("status")
    table = _table(title, *columns, right=("#", "numel"))
    # Names are what people search for: never cut them, wrap the rest.
    table.columns[columns.index("parameter")].no_wrap = True
    rows = params if not max_rows else params[:max_rows]
    for i, param in enumerate(rows):
        cells: list[str | Text] = [
            _param_name(param),
            _shape(param.shape),
            f"{param.numel:,}",
            cell(param),
        ]
        if numbered:
            cells.insert(0, str(i))
        if status:
            cells.append(_status(param))
        table.add_row(*cells)
    return _cut(table, len(rows), len(params), "parameter")


def render_params(params: Sequence[ParamInfo], *, max_rows: int | None = None) -> RenderableType:
    """Used parameters in first-use order."""
    return _param_table(
        "Parameter forward order (first use)",
        params,
        ("first use", _first_use),
        numbered=True,
        max_rows=max_rows,
    )


def render_unused(unused: Sequence[ParamInfo], *, max_rows: int | None = None) -> RenderableType:
    """Parameters the forward never used."""
    if not unused:
        return Text("No unused parameters.", style="green")
    owner = ("owner", lambda p: _label(p.owner))
    return _param_table("Unused parameters", unused, owner, max_rows=max_rows)


def render_dead(dead: Sequence[ParamInfo], *, max_rows: int | None = None) -> RenderableType:
    """Parameters used in forward whose uses never reach an output."""
    if not dead:
        return Text("No dead parameters: every use reaches an output.", style="green")
    return _param_table(
        "Dead parameters (no gradient)",
        dead,
        ("first use", _first_use),
        status=False,
        max_rows=max_rows,
    )


def render_external(external: Sequence[ExternalUse]) -> RenderableType:
    """Parameters used while none of the modules that own them was running."""
    table = _table("External uses (owner not running)", "parameter", "owner", "used by")
    for use in external:
        table.add_row(use.param, _label(use.owner), f"{_label(use.module)} (#{use.call})")
    return table


def render_backward(report: Report, *, max_rows: int | None = None) -> RenderableType:
    """Parameters in the order backward accumulated their gradients."""
    order = report.backward or ()
    table = _table("Backward order", "#", "parameter", "forward #", right=("#", "forward #"))
    forward = {p.name: i for i, p in enumerate(report.params)}
    rows = order if not max_rows else order[:max_rows]
    for i, name in enumerate(rows):
        table.add_row(str(i), name, str(forward.get(name, "")))
    return _cut(table, len(rows), len(order), "parameter")


def render_report(
    report: Report, *, depth: int | None = None, max_rows: int | None = None
) -> RenderableType:
    """All tables, the summary first.

    Args:
        report: The report to show.
        depth: Hide module calls nested deeper than this.
        max_rows: Show at most this many rows per table (None or 0: all).
    """
    parts = [
        render_summary(report),
        render_modules(report.modules, depth=depth, max_rows=max_rows),
        render_params(report.params, max_rows=max_rows),
        render_unused(report.unused, max_rows=max_rows),
        render_dead(report.dead, max_rows=max_rows),
    ]
    if report.external:
        parts.append(render_external(report.external))
    if report.backward is not None:
        parts.append(render_backward(report, max_rows=max_rows))
    # A table after a one-line message gets a blank line above its title.
    spaced: list[RenderableType] = []
    for part in parts:
        if spaced and isinstance(spaced[-1], Text) and not isinstance(part, Text):
            spaced.append(Text(""))
        spaced.append(part)
    return Group(*spaced)


_VERDICTS = {
    "dead": Text("dead (no use reaches an output)", "bold red"),
    "unused": Text("unused (never touched)", "bold yellow"),
    "used": Text("used: expected a gradient", "bold"),
}


def render_ddp(explanation: DdpExplanation) -> RenderableType:
    """DDP's parameter indices, named, with execorder's verdict on each."""
    table = _table(
        f"DDP parameter indices for {explanation.target}",
        "index",
        "parameter",
        "execorder says",
        "first use",
        right=("index",),
    )
    for entry in explanation.indices:
        first = _first_use(entry.param) if entry.param.used else ""
        table.add_row(str(entry.index), _param_name(entry.param), _VERDICTS[entry.status], first)
    if explanation.agrees:
        note = Text(
            f"execorder predicted exactly these {_count(len(explanation.indices), 'parameter')}.",
            "green",
        )
    else:
        note = Text()
        if explanation.not_named:
            names = ", ".join(p.name for p in explanation.not_named)
            note.append(f"execorder also predicts no gradient for: {names}\n", "yellow")
        if any(e.status == "used" for e in explanation.indices):
            note.append(
                "Some named parameters were expected to get a gradient: was the run traced "
                "with the same inputs, --concrete and --init values?",
                "yellow",
            )
    return Group(table, note)


def _diff_line(line: CallChange | Gap) -> Text:
    if isinstance(line, Gap):
        return Text(f"  … {_count(line.count, 'unchanged call')}", "dim")
    sign, style = {"=": (" ", "dim"), "-": ("-", "red"), "+": ("+", "green")}[line.op]
    text = Text(f"{sign} {'  ' * line.depth}{_label(line.name)}  [{line.type}]", style)
    if line.moved:
        text.append("  (moved)", "yellow")
    return text


def render_diff(diff: ReportDiff) -> RenderableType:
    """Verdict, notes, the aligned module-order diff, and parameter changes."""
    parts: list[RenderableType] = []
    if diff.equivalent:
        parts.append(Text(f"No change: {diff.new_target} runs as in the baseline.", "green"))
    else:
        counts = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in diff.counts().items() if v)
        parts.append(Text(f"Changed: {counts}", "bold yellow"))
    parts += [Text(f"note: {note}", "dim") for note in diff.notes]
    if diff.calls_changed:
        parts += [Text(), Text("Module forward order", "italic")]
        parts += [_diff_line(line) for line in diff.calls]
    if diff.params:
        table = _table("Parameter changes", "parameter", "change", "old", "new")
        for change in diff.params:
            table.add_row(change.name, change.what, change.old or "", change.new or "")
        parts += [Text(), table]
    if diff.external_added or diff.external_removed:
        table = _table("External uses", "", "use")
        for use in diff.external_added:
            table.add_row(Text("added", "red"), use)
        for use in diff.external_removed:
            table.add_row(Text("removed", "green"), use)
        parts += [Text(), table]
    return Group(*parts)


def render_sweep(sweep: SweepReport) -> RenderableType:
    """Combinations, then each parameter's status across them."""
    combos = _table(
        f"Sweep of {sweep.target}",
        "#",
        "combination",
        "calls",
        "params used",
        "no gradient",
        right=("#", "calls", "params used", "no gradient"),
    )
    for i, combo in enumerate(sweep.combinations):
        args = ", ".join(f"{k}={v!r}" for k, v in combo.args.items())
        combos.add_row(
            str(i), args, str(combo.calls), str(combo.params_used), str(combo.params_no_grad)
        )
    params = _table(
        "Parameters across combinations", "parameter", "status", "used in", "gets a gradient in"
    )
    order = {SOME: 0, NEVER: 1}
    styles = {SOME: "bold yellow", NEVER: "red"}
    words = {SOME: "branch-dependent", NEVER: "never used"}
    for param in sorted(sweep.params, key=lambda p: order.get(p.status, 2)):
        params.add_row(
            param.name,
            Text(words.get(param.status, "always used"), styles.get(param.status, "")),
            ", ".join(f"#{i}" for i in param.used_in) or "none",
            ", ".join(f"#{i}" for i in param.grad_in) or "none",
        )
    return Group(combos, params)
