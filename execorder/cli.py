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
from collections.abc import Callable, Iterator, Mapping
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
        "Execution-order profiler for PyTorch models: module order, parameter order, "
        "and the parameters that will get no gradient, found before you launch DDP or FSDP."
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
        help="Where to build (and in eager mode run) the model. Default: meta (no "
        "memory, no compute), falling back to cpu if real tensor values are needed.",
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


class Mode(str, Enum):
    auto = "auto"
    fx = "fx"
    eager = "eager"


ModeOpt = Annotated[
    Mode,
    typer.Option(
        help="fx traces symbolically (no inputs needed); eager runs forward for real "
        "(needs --input or --inputs; any model); auto tries fx, then eager if inputs are given."
    ),
]
InputOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--input",
        metavar="NAME=DTYPE[D0,...]",
        help="Eager mode: a tensor argument of forward (repeatable), e.g. x=float32[2,6] or "
        "input_ids=int64[1,32]@0:32000 (integers are zeros unless a @LOW:HIGH range is given).",
        show_default=False,
    ),
]
InputsOpt = Annotated[
    str | None,
    typer.Option(
        "--inputs",
        metavar="MODULE:FUNCTION",
        help="Eager mode: a function returning forward's arguments: a tuple, a dict of "
        "keyword arguments, or (tuple, dict). It may take a 'device' keyword.",
        show_default=False,
    ),
]
BackwardOpt = Annotated[
    bool,
    typer.Option(
        "--backward",
        help="Eager mode: also run backward and show the order in which gradients are "
        "accumulated (the order DDP's reducer and FSDP's prefetching see).",
    ),
]
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


def _load(target: str, init: list[str] | None, device: str | None) -> Any:
    """Build the model from TARGET; notes go to stderr."""
    from execorder.values import parse_assignments

    init_kwargs = parse_assignments(init or [], option="--init")
    _import_torch_side()
    from execorder.loading import load_target

    with _progress(f"Building {target}…"):
        loaded = load_target(target, init_kwargs=init_kwargs, device=device)
    for note in loaded.notes:
        _note(note)
    return loaded.model


def _short(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _note(text: str) -> None:
    typer.echo(f"execorder: note: {text}", err=True)


class _Tracer:
    """Traces one target under any concrete arguments, in the chosen mode.

    Holds what the CLI options say and the model, which is rebuilt on CPU
    once if an eager run on the meta device needs real values.
    """

    def __init__(
        self,
        target: str,
        *,
        init: list[str] | None,
        device: Device | None,
        mode: Mode,
        inputs: list[str] | None,
        inputs_factory: str | None,
        backward: bool,
    ) -> None:
        from execorder.inputs import parse_input

        self.target = target
        self.init = init
        self.chosen_device = device.value if device else None
        self.specs = [parse_input(text) for text in inputs or []]
        self.factory = inputs_factory
        self.backward = backward
        self.has_inputs = bool(self.specs or inputs_factory)
        if backward and mode is Mode.fx:
            raise ArgumentSyntaxError("--backward needs --mode eager (or auto)")
        if mode is Mode.fx and self.has_inputs:
            raise ArgumentSyntaxError("--input and --inputs apply to --mode eager (or auto)")
        self.mode = Mode.eager if backward else mode
        if self.mode is Mode.eager and not self.has_inputs:
            raise ArgumentSyntaxError(
                "eager mode runs forward for real: give its inputs with --input "
                "NAME=DTYPE[D0,...] (repeatable) or --inputs MODULE:FUNCTION"
            )
        self.device = self.chosen_device or "meta"
        self.model = _load(target, init, self.chosen_device)

    def __call__(self, concrete_args: Mapping[str, Any]) -> Any:
        from execorder.errors import TraceFailure

        if self.mode is Mode.eager:
            return self._eager(concrete_args)
        try:
            return _trace(self.model, self.target, dict(concrete_args))
        except TraceFailure as exc:
            if self.mode is Mode.fx:
                raise
            if not self.has_inputs:
                raise TraceFailure(
                    f"{exc}. Or run forward for real: --mode eager --input NAME=DTYPE[D0,...]"
                ) from exc
            reason = _short(str(exc).split(": ", 1)[-1].split(". ")[0])
            _note(f"torch.fx could not trace it ({reason}); ran forward eagerly instead")
            self.mode = Mode.eager
            return self._eager(concrete_args)

    def _inputs(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        from execorder.inputs import call_inputs_factory, make_input
        from execorder.loading import resolve_target

        args: tuple[Any, ...] = ()
        kwargs: dict[str, Any] = {}
        if self.factory:
            factory = resolve_target(self.factory)
            args, kwargs = call_inputs_factory(factory, self.factory, self.device)
        for spec in self.specs:
            kwargs[spec.name] = make_input(spec, self.device)
        return args, kwargs

    def _eager(self, concrete_args: Mapping[str, Any]) -> Any:
        from execorder.eager import MetaDeviceError
        from execorder.eager import trace as eager_trace

        args, kwargs = self._inputs()
        try:
            with _progress(f"Running {self.target} on {self.device}…"):
                return eager_trace(
                    self.model,
                    args=args,
                    kwargs={**kwargs, **concrete_args},
                    backward=self.backward,
                    target=self.target,
                )
        except MetaDeviceError as exc:
            if self.chosen_device is not None:
                raise
            reason = _short(str(exc).split(": ", 1)[-1].split(". Its forward")[0])
            _note(f"forward needs real values on the meta device ({reason}); reran it on CPU")
            self.device = "cpu"
            self.model = _load(self.target, self.init, "cpu")
            return self._eager(concrete_args)


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
    mode: ModeOpt = Mode.auto,
    input: InputOpt = None,
    inputs: InputsOpt = None,
    backward: BackwardOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Trace a model's forward and report its execution order.

    Shows the module forward order (every call), the parameter forward order
    (first use), which call used which parameters, and the parameters that
    get no gradient: unused (never touched) and dead (touched, but nothing
    they compute reaches an output). torch.fx traces it symbolically; eager
    mode runs it for real (on the meta device by default: shapes only).

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
        tracer = _Tracer(
            target,
            init=init,
            device=device,
            mode=mode,
            inputs=input,
            inputs_factory=inputs,
            backward=backward,
        )
        if axes:
            _run_sweep(tracer, axes, concrete_args, fmt, output)
            return
        report = tracer(concrete_args)
        differs = False
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
            differs = not diff.equivalent
        _gate(report, categories)
        if differs:
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
    tracer: _Tracer,
    axes: list[tuple[str, list[Any]]],
    fixed: dict[str, Any],
    fmt: OutputFormat,
    output: Path | None,
) -> None:
    from execorder.markdown import sweep_markdown
    from execorder.render import render_sweep
    from execorder.sweep import sweep as run_sweep

    result = run_sweep(tracer, axes=axes, fixed=fixed, target=tracer.target)
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
    mode: ModeOpt = Mode.auto,
    input: InputOpt = None,
    inputs: InputsOpt = None,
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
        tracer = _Tracer(
            target,
            init=init,
            device=device,
            mode=mode,
            inputs=input,
            inputs_factory=inputs,
            backward=False,
        )
        report = tracer(concrete_args)
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
