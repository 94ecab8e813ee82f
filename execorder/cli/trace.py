"""The report commands: `trace` (gates, sweeps, baselines), `diff`, `schema`, `ddp-indices`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from execorder.cli.app import Command, app, run_command
from execorder.cli.options import (
    BaselineOpt,
    DebugOpt,
    DepthOpt,
    FailOnOpt,
    FormatOpt,
    IndicesArg,
    MaxRowsOpt,
    ModelOptions,
    OutputFormat,
    OutputOpt,
    SweepOpt,
    UpdateBaselineOpt,
    model_command,
)
from execorder.cli.session import Session, said, say
from execorder.cli.values import parse_choices, parse_sweep
from execorder.cli.words import EXIT_FOUND, UsageError
from execorder.cli.writing import emit, report_view_of, timeline_of, tree_view_of
from execorder.errors import Arg
from execorder.output import files
from execorder.report.kinds import Category


def _parse_categories(text: str | None) -> tuple[Category, ...]:
    names = ", ".join(c.value for c in Category)
    known = {c.value: c for c in Category}
    hint = f"choose from: {names} (comma-separated)"
    return parse_choices(text, known, option="--fail-on", hint=hint)


def gate(result: Any, categories: tuple[Category, ...]) -> bool:
    """Print what a report's or a sweep's gate fails on (``result.failing``); whether it failed."""
    from execorder.output.views.gates import gate_lines

    return said(gate_lines(result.failing(categories)))


def over_budget(report: Any) -> bool:
    """Print why the memory's peak exceeds its budget, if it does; whether it does."""
    from execorder.output.views.gates import budget_line

    line = budget_line(report)
    return said([line] if line is not None else [])


def _check_trace_options(
    axes: list[Any],
    categories: tuple[Category, ...],
    baseline: Path | None,
    update: bool,
    output: Path | None,
    fmt: OutputFormat,
) -> None:
    if update and baseline is None:
        raise UsageError("--update-baseline needs --baseline FILE")
    if baseline is not None and output is not None and files.same_file(output, baseline):
        if not update:
            raise UsageError(
                f"--output {output} is the --baseline it would be compared with; "
                "write the report elsewhere, or rewrite the baseline with --update-baseline"
            )
        if fmt is not OutputFormat.json:
            raise UsageError(
                f"--output {output} is the --baseline, which gets the JSON report; "
                "use --format json, or write the table elsewhere"
            )
    if axes and baseline is not None:
        raise UsageError("--sweep cannot be combined with --baseline")
    if Category.BRANCH in categories and not axes:
        raise UsageError("--fail-on branch needs --sweep: it gates on what differs between runs")
    if Category.OUTPUTS in categories and axes:
        raise UsageError("--fail-on outputs gates one run's outputs: not with --sweep")
    for category in (Category.REENTRANT, Category.RECOMPUTE_ONLY):
        if category in categories and axes:
            raise UsageError(
                f"--fail-on {category} gates one run's backward passes: not with --sweep"
            )
    if baseline is not None and not update and not baseline.exists():
        raise UsageError(f"--baseline {baseline}: no such file; create it with --update-baseline")


def _check_replaceable(baseline: Path) -> None:
    """Refuse to write a baseline over a file that holds something else (empty ones hold none)."""
    from execorder.report import report_written

    if baseline.is_file() and baseline.stat().st_size and not report_written(baseline):
        raise UsageError(
            f"--baseline {baseline} is not an execorder report, and --update-baseline "
            "writes over baselines only: remove it first, or choose another file"
        )


@app.command(cls=Command)
@model_command()
def trace(
    options: ModelOptions,
    fmt: FormatOpt = OutputFormat.table,
    output: OutputOpt = None,
    depth: DepthOpt = None,
    max_rows: MaxRowsOpt = 200,
    fail_on: FailOnOpt = None,
    sweep: SweepOpt = None,
    baseline: BaselineOpt = None,
    update_baseline: UpdateBaselineOpt = False,
) -> None:
    """Trace a model's forward and report its execution order.

    Shows the module forward order (every call), the parameter forward order
    (first use), which call used which parameters, and the parameters that
    get no gradient: unused (never touched) and dead (touched, but nothing
    they compute reaches an output). torch.fx traces it symbolically; eager
    mode runs it for real (on the meta device by default: no memory, and what
    the inputs alone decide is computed).

    With --memory, also what a training step holds, and when its peak falls.

    Exit codes: 0 done; 1 a --fail-on check found something, the report
    differs from --baseline, or the memory's peak exceeds --memory-budget; 2
    the report could not be made (one line on stderr says why); 130
    interrupted; 141 the reader of stdout stopped.
    """

    def body() -> None:
        categories = _parse_categories(fail_on)
        concrete_args = options.concrete_args()
        axes = [parse_sweep(text) for text in sweep or []]
        _check_trace_options(axes, categories, baseline, update_baseline, output, fmt)
        if fmt in (OutputFormat.tree, OutputFormat.perfetto) and (axes or baseline):
            raise UsageError(
                f"--format {fmt.value} draws one report: not with --sweep or --baseline"
            )
        if output is not None:
            files.check_writable(output, reads=options.reads())
        if baseline is not None and update_baseline:
            files.check_writable(baseline, arg=Arg.BASELINE, reads=options.reads())
            _check_replaceable(baseline)
        session = Session(options)
        if axes:
            from execorder.output.views import sweep_view

            result = session.work(lambda profiler: profiler.sweep(axes, fixed=concrete_args))
            emit(result, lambda: sweep_view(result), fmt, output, kind="sweep")
            if gate(result, categories):
                raise typer.Exit(EXIT_FOUND)
            return
        report = session.run(concrete_args)
        differs = False
        if baseline is not None and not update_baseline:
            from execorder.analysis import diff_reports
            from execorder.output.views import diff_view
            from execorder.report import load_report

            result = diff_reports(load_report(baseline), report)
            emit(result, lambda: diff_view(result), fmt, output, kind="diff")
            differs = not result.equivalent
        else:
            if baseline is not None:
                text = json.dumps(report.to_dict(), indent=2) + "\n"
                files.write(baseline, text, arg=Arg.BASELINE)
            view = report_view_of(report, depth=depth, max_rows=max_rows)
            emit(
                report,
                view,
                fmt,
                output,
                kind="report",
                tree=tree_view_of(report, depth=depth, max_rows=max_rows),
                timeline=timeline_of(report),
            )
            if baseline is not None:
                say(f"execorder: baseline {baseline} written")
        over = over_budget(report)
        if gate(report, categories) or differs or over:
            raise typer.Exit(EXIT_FOUND)

    run_command(options.debug, body)


@app.command(cls=Command)
def diff(
    old: Annotated[Path, typer.Argument(metavar="OLD", help="The baseline JSON report.")],
    new: Annotated[Path, typer.Argument(metavar="NEW", help="The JSON report to check.")],
    fmt: FormatOpt = OutputFormat.table,
    output: OutputOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Show what changed between two JSON reports.

    Module calls added, removed or moved (an aligned diff), parameters whose
    first-use order, status (unused, dead, used) or shape changed, and
    external uses added or removed.

    Exit codes: 0 equivalent; 1 they differ; 2 bad input (missing file, not
    JSON, another schema_version).
    """

    def body() -> None:
        from execorder.analysis import diff_reports
        from execorder.output.views import diff_view
        from execorder.report import load_report

        if output is not None:
            files.check_writable(output, reads={old: "the OLD report", new: "the NEW report"})
        result = diff_reports(load_report(old), load_report(new))
        emit(result, lambda: diff_view(result), fmt, output, kind="diff")
        if not result.equivalent:
            raise typer.Exit(EXIT_FOUND)

    run_command(debug, body)


@app.command(cls=Command)
def schema() -> None:
    """Print the JSON Schema of everything --format json writes."""
    from importlib.resources import files as resources

    text = resources("execorder.report").joinpath("schema.json").read_text(encoding="utf-8")
    sys.stdout.write(text)


@app.command("ddp-indices", cls=Command)
@model_command(omit=("backward", "timing", "memory", "optimizer", "foreach", "memory_budget"))
def ddp_indices(
    options: ModelOptions, indices: IndicesArg, fmt: FormatOpt = OutputFormat.table
) -> None:
    """Name the parameters in DDP's "did not receive grad" error.

    DDP numbers the parameters that require grad in model.parameters() order.
    Each index is shown with its qualified name and whether execorder
    predicted it as unused or dead. Use the same --init and --concrete values
    as the run that failed.
    """

    def body() -> None:
        from execorder.analysis import explain_indices, parse_indices
        from execorder.output.views import ddp_view

        wanted = parse_indices(indices)
        concrete_args = options.concrete_args()
        session = Session(options)
        explanation = explain_indices(session.run(concrete_args), wanted)
        emit(explanation, lambda: ddp_view(explanation), fmt, None, kind="ddp-indices")

    run_command(options.debug, body)
