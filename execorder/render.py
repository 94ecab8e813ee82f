"""Rich renderings of a :class:`~execorder.report.Report` (presentation only)."""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from execorder.report import ModuleCall, ParamInfo, Report

ROOT_LABEL = "(root)"


def _label(name: str) -> str:
    return name or ROOT_LABEL


def _shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _table(title: str, *columns: str, right: Sequence[str] = ()) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in columns:
        table.add_column(column, justify="right" if column in right else "left")
    return table


def _count(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def _hidden(text: str) -> Text:
    return Text(f"… {text}\n", style="dim")


def render_summary(report: Report) -> Table:
    """Key facts: what was traced and how much of the model forward used."""
    s = report.summary
    table = _table("Summary", "", "")
    table.show_header = False
    table.add_row("target", f"{report.target} ({report.mode} trace)")
    if report.concrete_args:
        args = ", ".join(f"{k}={v!r}" for k, v in report.concrete_args.items())
        table.add_row("concrete args", args)
    table.add_row("module calls", f"{s.calls:,} ({s.modules:,} distinct modules)")
    table.add_row("parameters used", f"{s.params_used:,} of {s.params_total:,}")
    unused = Text(f"{s.params_unused:,} ({s.numel_unused:,} elements, {s.unused_fraction:.1%})")
    if s.params_unused:
        unused.stylize("bold yellow")
    table.add_row("parameters unused", unused)
    return table


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
        parts.append(
            _hidden(f"{_count(len(calls) - len(shown), 'call')} nested deeper than {depth} hidden")
        )
    if len(rows) < len(shown):
        more = _count(len(shown) - len(rows), "more call")
        parts.append(_hidden(f"{more} (--max-rows 0 shows all)"))
    return Group(*parts)


def _param_name(param: ParamInfo) -> Text:
    text = Text(param.name)
    if param.aliases:
        text.append(" = " + ", ".join(param.aliases), style="dim")
    return text


def render_params(params: Sequence[ParamInfo], *, max_rows: int | None = None) -> RenderableType:
    """Used parameters in first-use order."""
    table = _table(
        "Parameter forward order (first use)",
        "#",
        "parameter",
        "shape",
        "numel",
        "first used by",
        right=("#", "numel"),
    )
    rows = params if not max_rows else params[:max_rows]
    for i, param in enumerate(rows):
        table.add_row(
            str(i),
            _param_name(param),
            _shape(param.shape),
            f"{param.numel:,}",
            f"{_label(param.first_module or '')} (#{param.first_call})",
        )
    if len(rows) < len(params):
        more = _count(len(params) - len(rows), "more parameter")
        return Group(table, _hidden(f"{more} (--max-rows 0)"))
    return table


def render_unused(unused: Sequence[ParamInfo], *, max_rows: int | None = None) -> RenderableType:
    """Parameters the forward never used."""
    if not unused:
        return Text("No unused parameters.", style="green")
    table = _table("Unused parameters", "parameter", "shape", "numel", "owner", right=("numel",))
    rows = unused if not max_rows else unused[:max_rows]
    for param in rows:
        table.add_row(
            _param_name(param), _shape(param.shape), f"{param.numel:,}", _label(param.owner)
        )
    if len(rows) < len(unused):
        more = _count(len(unused) - len(rows), "more unused parameter")
        return Group(table, _hidden(f"{more} (--max-rows 0)"))
    return table


def render_report(
    report: Report, *, depth: int | None = None, max_rows: int | None = None
) -> RenderableType:
    """All tables, the summary first.

    Args:
        report: The report to show.
        depth: Hide module calls nested deeper than this.
        max_rows: Show at most this many rows per table (None or 0: all).
    """
    return Group(
        render_summary(report),
        render_modules(report.modules, depth=depth, max_rows=max_rows),
        render_params(report.params, max_rows=max_rows),
        render_unused(report.unused, max_rows=max_rows),
    )
