"""The ``execorder`` command line: parse options, call the library, render, exit.

torch is imported only inside commands, so ``execorder --help`` stays instant.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from execorder import __version__
from execorder.errors import ArgumentSyntaxError, ExecOrderError, OutputError

app = typer.Typer(
    name="execorder",
    help=(
        "Execution-order profiler for PyTorch models: module order, parameter order "
        "and unused parameters, found before you launch DDP or FSDP."
    ),
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)

T = TypeVar("T")


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    markdown = "markdown"


class Device(str, Enum):
    meta = "meta"
    cpu = "cpu"
    cuda = "cuda"


TargetArg = Annotated[
    str,
    typer.Argument(
        metavar="TARGET",
        help="The model: 'package.module:Attr' or 'path/to/file.py:Attr', where Attr is "
        "an nn.Module subclass, a function returning one, or an nn.Module instance.",
        show_default=False,
    ),
]
ConcreteOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--concrete",
        "-c",
        metavar="NAME=VALUE",
        help="A fixed value for a forward() argument, e.g. a flag that picks a branch "
        "(repeatable). VALUE: true/false, none, numbers, JSON, Python literals or text.",
        show_default=False,
    ),
]
InitOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--init",
        "-i",
        metavar="NAME=VALUE",
        help="A keyword argument for the model's constructor or factory (repeatable).",
        show_default=False,
    ),
]
DeviceOpt = Annotated[
    Device | None,
    typer.Option(
        help="Where to build the model. Default: meta (no memory, no init), "
        "falling back to cpu if the constructor needs real tensors.",
        show_default=False,
    ),
]
FormatOpt = Annotated[
    OutputFormat,
    typer.Option(
        "--format", "-f", help="table for people, json for CI, markdown for pull requests."
    ),
]
OutputOpt = Annotated[
    Path | None,
    typer.Option(
        "--output",
        "-o",
        metavar="FILE",
        help="Write the report to FILE instead of stdout.",
        dir_okay=False,
        show_default=False,
    ),
]
DepthOpt = Annotated[
    int | None,
    typer.Option(
        min=0,
        metavar="N",
        help="Table: hide module calls nested deeper than N (JSON always has all).",
        show_default=False,
    ),
]
MaxRowsOpt = Annotated[
    int, typer.Option(min=0, metavar="N", help="Table: at most N rows per table; 0 shows all.")
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")]
FailOnOpt = Annotated[
    str | None,
    typer.Option(
        "--fail-on",
        metavar="CATEGORIES",
        help="CI gate: after the report, exit 1 if any listed category is non-empty. "
        "Comma-separated: unused, dead, external. unused and dead count trainable "
        "parameters only.",
        show_default=False,
    ),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"execorder {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = None,
) -> None:
    """Execution-order profiler for PyTorch models."""


_stderr = Console(stderr=True, highlight=False)


@contextmanager
def _progress(message: str) -> Iterator[None]:
    """A spinner on stderr while something slow runs, when stderr is a terminal."""
    if _stderr.is_terminal:
        with _stderr.status(message):
            yield
    else:
        yield


def _run(debug: bool, body: Callable[[], T]) -> T:
    """Run a command body; turn errors into one line on stderr and an exit code."""
    try:
        return body()
    except typer.Exit:
        raise
    except ExecOrderError as exc:
        if debug:
            traceback.print_exc()
        typer.echo(f"execorder: error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        _stderr.print("execorder: interrupted", markup=False)
        raise typer.Exit(130) from None
    except Exception as exc:
        if debug:
            traceback.print_exc()
        _stderr.print(
            f"execorder: internal error: {type(exc).__name__}: {exc} "
            "(rerun with --debug for the traceback)",
            markup=False,
        )
        raise typer.Exit(2) from None


def _check_writable(path: Path) -> None:
    """Fail before any work if the report could not be written to ``path``."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise OutputError(f"--output {path} is a directory")
    if not parent.is_dir():
        raise OutputError(f"--output {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise OutputError(f"--output {path}: permission denied")


def _write(path: Path, text: str) -> None:
    """Write atomically, so a failure never leaves a half-written report."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"--output {path}: {exc.strerror or exc}") from None


def _emit(
    doc: Any,
    fmt: OutputFormat,
    output: Path | None,
    table: Callable[[], Any],
    markdown: Callable[[], str],
) -> None:
    """Write a report, diff or sweep to stdout or ``output`` in the chosen format."""
    if fmt is OutputFormat.table:
        if output is None:
            Console(highlight=False).print(table())
            return
        buffer = io.StringIO()
        Console(width=120, color_system=None, file=buffer).print(table())
        text = buffer.getvalue()
    elif fmt is OutputFormat.json:
        text = json.dumps(doc.to_dict(), indent=2) + "\n"
    else:
        text = markdown()
    if output is None:
        sys.stdout.write(text)
    else:
        _write(output, text)


def _emit_report(report: Any, fmt: OutputFormat, output: Path | None, **opts: Any) -> None:
    from execorder.markdown import report_markdown
    from execorder.render import render_report

    _emit(
        report, fmt, output, lambda: render_report(report, **opts), lambda: report_markdown(report)
    )


def _emit_diff(diff: Any, fmt: OutputFormat, output: Path | None) -> None:
    from execorder.markdown import diff_markdown
    from execorder.render import render_diff

    _emit(diff, fmt, output, lambda: render_diff(diff), lambda: diff_markdown(diff))


def _import_torch_side() -> None:
    with _progress("Loading torch…"), warnings.catch_warnings():
        # torch warns on import when NumPy is absent; execorder never needs it.
        warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
        import execorder.fx  # noqa: F401


def _load(target: str, init: list[str] | None, device: Device | None) -> Any:
    """Build the model from TARGET; notes go to stderr."""
    from execorder.values import parse_assignments

    init_kwargs = parse_assignments(init or [], option="--init")
    _import_torch_side()
    from execorder.loading import load_target

    with _progress(f"Building {target}…"):
        loaded = load_target(
            target, init_kwargs=init_kwargs, device=device.value if device else None
        )
    for note in loaded.notes:
        _stderr.print(f"execorder: note: {note}", markup=False)
    return loaded.model


def _trace(model: Any, target: str, concrete_args: dict[str, Any]) -> Any:
    from execorder.fx import trace as fx_trace

    with _progress(f"Tracing {target}…"):
        return fx_trace(model, concrete_args=concrete_args, target=target)


def _parse_categories(text: str | None) -> tuple[str, ...]:
    from execorder.report import CATEGORIES

    if text is None:
        return ()
    chosen = tuple(dict.fromkeys(c.strip() for c in text.split(",") if c.strip()))
    unknown = [c for c in chosen if c not in CATEGORIES]
    if unknown or not chosen:
        raise ArgumentSyntaxError(
            f"--fail-on got {unknown[0] if unknown else text!r}; "
            f"choose from: {', '.join(CATEGORIES)} (comma-separated)"
        )
    return chosen


def _gate(report: Any, categories: tuple[str, ...]) -> None:
    """Exit 1, with one line per category, if the report has any of the findings."""
    failed = False
    for category in categories:
        found = report.findings(category)
        if found:
            failed = True
            shown = ", ".join(found[:5]) + (
                f", … ({len(found) - 5} more)" if len(found) > 5 else ""
            )
            typer.echo(f"execorder: check failed: {category}: {len(found)} ({shown})", err=True)
    if failed:
        raise typer.Exit(1)


SweepOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--sweep",
        metavar="NAME=V1,V2,...",
        help="Trace every combination of these forward() argument values (repeatable: the "
        "cross product) and show which parameters are used always, in some combinations "
        "only (branch-dependent), or never.",
        show_default=False,
    ),
]
BaselineOpt = Annotated[
    Path | None,
    typer.Option(
        "--baseline",
        metavar="FILE",
        help="Compare with this stored JSON report and print the differences instead of "
        "the report; exit 1 if they differ.",
        dir_okay=False,
        show_default=False,
    ),
]
UpdateBaselineOpt = Annotated[
    bool,
    typer.Option("--update-baseline", help="Write the new report to the --baseline FILE."),
]


@app.command()
def trace(
    target: TargetArg,
    concrete: ConcreteOpt = None,
    init: InitOpt = None,
    device: DeviceOpt = None,
    fmt: FormatOpt = OutputFormat.table,
    output: OutputOpt = None,
    depth: DepthOpt = None,
    max_rows: MaxRowsOpt = 200,
    fail_on: FailOnOpt = None,
    sweep: SweepOpt = None,
    baseline: BaselineOpt = None,
    update_baseline: UpdateBaselineOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Trace a model's forward with torch.fx and report its execution order.

    Shows the module forward order (every call), the parameter forward order
    (first use), which call used which parameters, and the parameters that
    get no gradient: unused (never touched) and dead (touched, but nothing
    they compute reaches an output).

    Exit codes: 0 done; 1 a --fail-on check found something, or the report
    differs from --baseline; 2 the trace could not be made (bad input, trace
    failure).
    """

    def body() -> None:
        from execorder.values import parse_assignments, parse_sweep

        categories = _parse_categories(fail_on)
        concrete_args = parse_assignments(concrete or [], option="--concrete")
        axes = [parse_sweep(text) for text in sweep or []]
        _check_trace_options(axes, categories, baseline, update_baseline)
        for path in (output, baseline if update_baseline else None):
            if path is not None:
                _check_writable(path)
        model = _load(target, init, device)
        if axes:
            _run_sweep(model, target, axes, concrete_args, fmt, output)
            return
        report = _trace(model, target, concrete_args)
        if baseline is None:
            _emit_report(report, fmt, output, depth=depth, max_rows=max_rows)
        elif update_baseline:
            _write(baseline, json.dumps(report.to_dict(), indent=2) + "\n")
            _emit_report(report, fmt, output, depth=depth, max_rows=max_rows)
            _stderr.print(f"execorder: baseline {baseline} written", markup=False)
        else:
            from execorder.diff import diff_reports, load_report

            diff = diff_reports(load_report(baseline), report)
            _emit_diff(diff, fmt, output)
        _gate(report, categories)
        if baseline is not None and not update_baseline and not diff.equivalent:
            raise typer.Exit(1)

    _run(debug, body)


def _check_trace_options(
    axes: list[Any], categories: tuple[str, ...], baseline: Path | None, update: bool
) -> None:
    if update and baseline is None:
        raise ArgumentSyntaxError("--update-baseline needs --baseline FILE")
    if axes and (baseline is not None or categories):
        raise ArgumentSyntaxError("--sweep cannot be combined with --baseline or --fail-on")
    if baseline is not None and not update and not baseline.exists():
        raise ArgumentSyntaxError(
            f"--baseline {baseline}: no such file; create it with --update-baseline"
        )


def _run_sweep(
    model: Any,
    target: str,
    axes: list[tuple[str, list[Any]]],
    fixed: dict[str, Any],
    fmt: OutputFormat,
    output: Path | None,
) -> None:
    from execorder.fx import trace as fx_trace
    from execorder.markdown import sweep_markdown
    from execorder.render import render_sweep
    from execorder.sweep import sweep as run_sweep

    def trace_one(args: Any) -> Any:
        return fx_trace(model, concrete_args=args, target=target)

    count = 1
    for _, values in axes:
        count *= len(values)
    with _progress(f"Tracing {target} under {count} combinations…"):
        result = run_sweep(trace_one, axes=axes, fixed=fixed, target=target)
    _emit(result, fmt, output, lambda: render_sweep(result), lambda: sweep_markdown(result))


@app.command()
def diff(
    old: Annotated[Path, typer.Argument(metavar="OLD", help="The baseline JSON report.")],
    new: Annotated[Path, typer.Argument(metavar="NEW", help="The JSON report to check.")],
    fmt: FormatOpt = OutputFormat.table,
    output: OutputOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Show what changed between two JSON reports of execorder trace.

    Module calls added, removed or moved (an aligned diff), parameters whose
    first-use order, status (unused, dead, used) or shape changed, and
    external uses added or removed.

    Exit codes: 0 equivalent; 1 they differ; 2 bad input (missing file, not
    JSON, another schema_version).
    """

    def body() -> None:
        from execorder.diff import diff_reports, load_report

        if output is not None:
            _check_writable(output)
        result = diff_reports(load_report(old), load_report(new))
        _emit_diff(result, fmt, output)
        if not result.equivalent:
            raise typer.Exit(1)

    _run(debug, body)


@app.command()
def schema() -> None:
    """Print the JSON Schema of everything execorder writes with --format json."""
    from importlib.resources import files

    sys.stdout.write(files("execorder").joinpath("schema.json").read_text(encoding="utf-8"))


IndicesArg = Annotated[
    str,
    typer.Argument(
        metavar="INDICES",
        help="The indices from DDP's error, e.g. '0 1 2 5 6 7' (or paste the whole "
        "'Parameter indices which did not receive grad for rank 0: ...' line).",
        show_default=False,
    ),
]


@app.command("ddp-indices")
def ddp_indices(
    target: TargetArg,
    indices: IndicesArg,
    concrete: ConcreteOpt = None,
    init: InitOpt = None,
    device: DeviceOpt = None,
    fmt: FormatOpt = OutputFormat.table,
    debug: DebugOpt = False,
) -> None:
    """Name the parameters in DDP's "did not receive grad" error.

    DDP numbers the parameters that require grad in model.parameters() order.
    Each index is shown with its qualified name and whether execorder
    predicted it as unused or dead. Use the same --init and --concrete values
    as the run that failed.
    """

    def body() -> None:
        from execorder.ddp import explain_indices, parse_indices
        from execorder.values import parse_assignments

        wanted = parse_indices(indices)
        concrete_args = parse_assignments(concrete or [], option="--concrete")
        report = _trace(_load(target, init, device), target, concrete_args)
        explanation = explain_indices(report, wanted)
        from execorder.markdown import ddp_markdown
        from execorder.render import render_ddp

        _emit(
            explanation,
            fmt,
            None,
            lambda: render_ddp(explanation),
            lambda: ddp_markdown(explanation),
        )

    _run(debug, body)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="execorder")
