"""The ``execorder`` command line: parse options, call the library, render, exit.

torch is imported only inside commands, so ``execorder --help`` (and shell
completion) stays instant.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

from execorder import __version__
from execorder.cli.options import (
    AssumeOpt,
    BackwardOpt,
    BaselineOpt,
    ConcreteOpt,
    DebugOpt,
    DepthOpt,
    DeviceOpt,
    FailOnOpt,
    FormatOpt,
    FsdpFailOnOpt,
    FsdpSweepOpt,
    IndicesArg,
    InitOpt,
    InputOpt,
    InputsOpt,
    MaxRowsOpt,
    ModeOpt,
    NprocOpt,
    OutputFormat,
    OutputOpt,
    PrefetchOpt,
    RankSeedOpt,
    RanksFailOnOpt,
    SeedOpt,
    SweepOpt,
    TargetArg,
    TimeoutOpt,
    TimingOpt,
    UnitOpt,
    UpdateBaselineOpt,
)
from execorder.cli.session import ModelOptions, Session, load_factory, say
from execorder.cli.values import parse_assignments, parse_sweep
from execorder.cli.words import (
    CLI,
    EXIT_BROKEN_PIPE,
    EXIT_ERROR,
    EXIT_FOUND,
    EXIT_INTERRUPTED,
    UsageError,
    message,
)
from execorder.errors import Arg, ExecOrderError
from execorder.output import files
from execorder.report.kinds import Category, Mode

T = TypeVar("T")
# click's UsageError and ClickException, whether Typer vendors click (0.29 and
# later) or uses it: BadParameter derives from the one, which derives from the other.
_UsageError: type[Any] = typer.BadParameter.__bases__[0]
_ClickException: type[Any] = _UsageError.__bases__[0]


class _Group(TyperGroup):
    """Typer's group, with click's usage errors as one line like every other error."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        standalone = kwargs.pop("standalone_mode", True)
        kwargs["standalone_mode"] = False  # errors come back here rather than print
        if not standalone:
            return super().main(*args, **kwargs)
        try:
            code = super().main(*args, **kwargs)
        except _UsageError as exc:
            _error(_usage_message(exc))
            sys.exit(EXIT_ERROR)
        except _ClickException as exc:
            _error(exc.format_message())
            sys.exit(exc.exit_code)
        except typer.Abort:
            _error("interrupted")
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(code if isinstance(code, int) else 0)


class _Command(TyperCommand):
    """Typer's command; required arguments read ``TARGET`` in the usage line, not ``{TARGET}``."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = super().collect_usage_pieces(ctx)
        return [piece.removeprefix("{").removesuffix("}") for piece in pieces]


def _usage_message(exc: Any) -> str:
    """click's usage error in one line, with where to find help."""
    text = " ".join(exc.format_message().split()).rstrip(".")
    text = text.replace("Value error, ", "")  # pydantic's prefix on choices (Typer 0.29)
    command = exc.ctx.command_path if exc.ctx else "execorder"
    return f"{text} (see '{command} -h')"


app = typer.Typer(
    name="execorder",
    cls=_Group,
    help=(
        "Execution-order profiler for PyTorch models: module order, parameter order, "
        "and the parameters that will get no gradient, found before you launch DDP or FSDP."
    ),
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


def _silence_stdout() -> None:
    """Point stdout at the null device, so flushing it at exit cannot fail again."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


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


def _error(text: str) -> None:
    say(f"execorder: error: {text}")


def _run(debug: bool, body: Callable[[], T]) -> T:
    """Run a command body; turn errors into one line on stderr and an exit code."""
    try:
        return body()
    except typer.Exit:
        raise
    except BrokenPipeError:
        # The reader stopped (| head): exit quietly, as a Unix tool killed by SIGPIPE does.
        _silence_stdout()
        raise typer.Exit(EXIT_BROKEN_PIPE) from None
    except ExecOrderError as exc:
        if debug:
            traceback.print_exc()
        _error(message(exc))
        raise typer.Exit(EXIT_ERROR) from None
    except KeyboardInterrupt:
        _error("interrupted")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except Exception as exc:
        if debug:
            traceback.print_exc()
        say(
            f"execorder: internal error: {type(exc).__name__}: {exc} "
            "(rerun with --debug for the traceback)"
        )
        raise typer.Exit(EXIT_ERROR) from None


# -- writing ------------------------------------------------------------------


def _emit(
    doc: Any,
    view: Callable[[], Any],
    fmt: OutputFormat,
    output: Path | None,
    *,
    kind: str,
    tree: Callable[[], Any] | None = None,
    timeline: Callable[[], Any] | None = None,
    data: Callable[[], Any] | None = None,
) -> None:
    """Write a report, diff, sweep or DDP explanation (``kind``) in the chosen format.

    Files are UTF-8; stdout gets what its encoding can write (ASCII stand-ins
    on an ASCII or code-page console). ``tree`` and ``timeline`` make the
    tree view and the Trace Event JSON, for what has them; ``data`` the
    JSON data, when it is not ``doc.to_dict()``.
    """
    encoding = "utf-8" if output else (getattr(sys.stdout, "encoding", None) or "utf-8")
    if fmt is OutputFormat.tree:
        if tree is None:
            raise UsageError(f"--format tree applies to trace and fsdp, not to a {kind}")
        view = tree
    if fmt is OutputFormat.json:
        text = json.dumps(data() if data else doc.to_dict(), indent=2) + "\n"
    elif fmt is OutputFormat.perfetto:
        if timeline is None:
            raise UsageError(f"--format perfetto applies to trace and fsdp, not to a {kind}")
        text = json.dumps(timeline()) + "\n"
    elif fmt is OutputFormat.markdown:
        from execorder.output import markdown, terminal

        text = terminal.encodable(markdown.draw(view()), encoding)
    else:
        from execorder.output import terminal

        renderable = terminal.draw(view())
        console = Console(highlight=False)
        if output is None and console.is_terminal and console.encoding.startswith("utf"):
            # Too narrow a terminal wraps a table's lines rather than cutting them.
            console.print(renderable, crop=False)
            return
        width = 120 if output else console.width
        text = terminal.plain_text(renderable, width=width, encoding=encoding)
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        files.write(output, text)
        say(f"execorder: {kind} written to {output}")
        if fmt is OutputFormat.perfetto:
            say("execorder: open it at https://ui.perfetto.dev (or chrome://tracing)")


# Each imported when drawn: JSON needs none of them.


def _report_view(report: Any, **opts: Any) -> Callable[[], Any]:
    def view() -> Any:
        from execorder.output.views import report_view

        return report_view(report, words=CLI, **opts)

    return view


def _tree_view(report: Any, **opts: Any) -> Callable[[], Any]:
    def view() -> Any:
        from execorder.output.views import tree_view

        return tree_view(report, words=CLI, **opts)

    return view


def _timeline(report: Any, plan: Any = None) -> Callable[[], Any]:
    def view() -> Any:
        from execorder.output.perfetto import timeline

        return timeline(report, plan=plan, words=CLI)

    return view


def _model(ctx: Any) -> ModelOptions:
    """The model options the command was given; those it does not take keep their defaults."""
    names = {f.name for f in dataclasses.fields(ModelOptions)}
    return ModelOptions(**{k: v for k, v in ctx.params.items() if k in names})


def _parse_categories(text: str | None) -> tuple[Category, ...]:
    if text is None:
        return ()
    chosen = tuple(dict.fromkeys(c.strip() for c in text.split(",") if c.strip()))
    names = [c.value for c in Category]
    unknown = [c for c in chosen if c not in names]
    if unknown or not chosen:
        raise UsageError(
            f"--fail-on got {unknown[0] if unknown else text!r}; "
            f"choose from: {', '.join(names)} (comma-separated)"
        )
    return tuple(Category(c) for c in chosen)


def _gate(report: Any, categories: tuple[Category, ...]) -> bool:
    """Print one line per category the gate fails on (``report.failing``); whether it failed."""
    failing = report.failing(categories)
    for category, found in failing.items():
        shown = ", ".join(found[:5]) + (f", … ({len(found) - 5} more)" if len(found) > 5 else "")
        why = (
            " (they rest on an assumption: unused and dead cannot be proven for them)"
            if category is Category.ASSUMPTION
            else ""
        )
        say(f"execorder: check failed: {category}: {len(found)} ({shown}){why}")
    return bool(failing)


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
    if baseline is not None and not update and not baseline.exists():
        raise UsageError(f"--baseline {baseline}: no such file; create it with --update-baseline")


# -- commands -----------------------------------------------------------------


@app.command(cls=_Command)
def trace(
    ctx: typer.Context,
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
    mode: ModeOpt = Mode.AUTO,
    input: InputOpt = None,
    inputs: InputsOpt = None,
    backward: BackwardOpt = False,
    assume: AssumeOpt = True,
    seed: SeedOpt = 0,
    timing: TimingOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Trace a model's forward and report its execution order.

    Shows the module forward order (every call), the parameter forward order
    (first use), which call used which parameters, and the parameters that
    get no gradient: unused (never touched) and dead (touched, but nothing
    they compute reaches an output). torch.fx traces it symbolically; eager
    mode runs it for real (on the meta device by default: no memory, and what
    the inputs alone decide is computed).

    Exit codes: 0 done; 1 a --fail-on check found something, or the report
    differs from --baseline; 2 the report could not be made (one line on
    stderr says why); 130 interrupted; 141 the reader of stdout stopped.
    """

    def body() -> None:
        categories = _parse_categories(fail_on)
        concrete_args = parse_assignments(concrete or [], option="--concrete")
        axes = [parse_sweep(text) for text in sweep or []]
        _check_trace_options(axes, categories, baseline, update_baseline, output, fmt)
        if fmt in (OutputFormat.tree, OutputFormat.perfetto) and (axes or baseline):
            raise UsageError(
                f"--format {fmt.value} draws one report: not with --sweep or --baseline"
            )
        for path in (output, baseline if update_baseline else None):
            if path is not None:
                files.check_writable(path)
        session = Session(_model(ctx))
        if axes:
            from execorder.output.views import sweep_view

            result = session.sweep(axes, concrete_args)
            _emit(result, lambda: sweep_view(result), fmt, output, kind="sweep")
            if _gate(result, categories):
                raise typer.Exit(EXIT_FOUND)
            return
        report = session.run(concrete_args)
        differs = False
        if baseline is not None and not update_baseline:
            from execorder.analysis import diff_reports
            from execorder.output.views import diff_view
            from execorder.report import load_report

            result = diff_reports(load_report(baseline), report)
            _emit(result, lambda: diff_view(result), fmt, output, kind="diff")
            differs = not result.equivalent
        else:
            if baseline is not None:
                text = json.dumps(report.to_dict(), indent=2) + "\n"
                files.write(baseline, text, arg=Arg.BASELINE)
            view = _report_view(report, depth=depth, max_rows=max_rows)
            _emit(
                report,
                view,
                fmt,
                output,
                kind="report",
                tree=_tree_view(report, depth=depth, max_rows=max_rows),
                timeline=_timeline(report),
            )
            if baseline is not None:
                say(f"execorder: baseline {baseline} written")
        if _gate(report, categories) or differs:
            raise typer.Exit(EXIT_FOUND)

    _run(debug, body)


@app.command(cls=_Command)
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
            files.check_writable(output)
        result = diff_reports(load_report(old), load_report(new))
        _emit(result, lambda: diff_view(result), fmt, output, kind="diff")
        if not result.equivalent:
            raise typer.Exit(EXIT_FOUND)

    _run(debug, body)


@app.command(cls=_Command)
def schema() -> None:
    """Print the JSON Schema of everything --format json writes."""
    from importlib.resources import files as resources

    text = resources("execorder.report").joinpath("schema.json").read_text(encoding="utf-8")
    sys.stdout.write(text)


@app.command("ddp-indices", cls=_Command)
def ddp_indices(
    ctx: typer.Context,
    target: TargetArg,
    indices: IndicesArg,
    concrete: ConcreteOpt = None,
    init: InitOpt = None,
    device: DeviceOpt = None,
    fmt: FormatOpt = OutputFormat.table,
    mode: ModeOpt = Mode.AUTO,
    input: InputOpt = None,
    inputs: InputsOpt = None,
    assume: AssumeOpt = True,
    seed: SeedOpt = 0,
    debug: DebugOpt = False,
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
        concrete_args = parse_assignments(concrete or [], option="--concrete")
        session = Session(_model(ctx))
        explanation = explain_indices(session.run(concrete_args), wanted)
        _emit(explanation, lambda: ddp_view(explanation), fmt, None, kind="ddp-indices")

    _run(debug, body)


def _parse_gates(text: str | None) -> tuple[Any, ...]:
    """An FSDP plan's --fail-on: severities (that and worse) or check kinds."""
    from execorder.analysis.sharding import SEVERITY_RANK, CheckKind

    if text is None:
        return ()
    chosen = tuple(dict.fromkeys(c.strip() for c in text.split(",") if c.strip()))
    known = {s.value: s for s in SEVERITY_RANK} | {k.value: k for k in CheckKind}
    unknown = [c for c in chosen if c not in known]
    if unknown or not chosen:
        raise UsageError(
            f"--fail-on got {unknown[0] if unknown else text!r}; choose a severity "
            f"({', '.join(s.value for s in SEVERITY_RANK)}) or checks "
            f"({', '.join(k.value for k in CheckKind)}), comma-separated"
        )
    return tuple(known[c] for c in chosen)


@app.command(cls=_Command)
def fsdp(
    ctx: typer.Context,
    target: TargetArg,
    unit: UnitOpt = None,
    prefetch: PrefetchOpt = 1,
    concrete: ConcreteOpt = None,
    init: InitOpt = None,
    device: DeviceOpt = None,
    fmt: FormatOpt = OutputFormat.table,
    output: OutputOpt = None,
    fail_on: FsdpFailOnOpt = None,
    sweep: FsdpSweepOpt = None,
    mode: ModeOpt = Mode.AUTO,
    input: InputOpt = None,
    inputs: InputsOpt = None,
    backward: BackwardOpt = False,
    assume: AssumeOpt = True,
    seed: SeedOpt = 0,
    debug: DebugOpt = False,
) -> None:
    """Plan FSDP2 (fully_shard) from the order forward really runs.

    Picks the units, gives each unit's forward and backward prefetch lists
    (for set_modules_to_forward_prefetch and set_modules_to_backward_prefetch)
    from the recorded order, and checks what breaks FSDP2: a unit's parameters
    read outside its forward, a parameter in two units, units that never run,
    run twice, or (with --sweep) run for some values only, and where lists
    built from registration order would prefetch the wrong unit. With
    --backward the backward lists follow a real backward. Apply a JSON plan
    with execorder.fsdp.apply (after your own fully_shard calls) or
    execorder.fsdp.shard.

    Exit codes: 0 done; 1 a --fail-on check was found; 2 the plan could not
    be made (one line on stderr says why); 130 interrupted; 141 the reader of
    stdout stopped.
    """

    def body() -> None:
        from execorder.output.views import fsdp_view
        from execorder.spelling import label

        gates = _parse_gates(fail_on)
        concrete_args = parse_assignments(concrete or [], option="--concrete")
        axes = [parse_sweep(text) for text in sweep or []]
        if output is not None:
            files.check_writable(output)
        session = Session(_model(ctx))
        plan, report = session.plan(
            units=list(unit or []), prefetch=prefetch, concrete_args=concrete_args, axes=axes
        )
        _emit(
            plan,
            lambda: fsdp_view(plan, words=CLI),
            fmt,
            output,
            kind="FSDP plan",
            data=lambda: plan.to_dict(words=CLI),
            tree=_tree_view(report, plan=plan),
            timeline=_timeline(report, plan),
        )
        failing = plan.failing(gates)
        for check in failing:
            units = ", ".join(label(u) for u in check.units)
            say(f"execorder: check failed: {check.kind} ({check.severity}): {units}")
        if failing:
            raise typer.Exit(EXIT_FOUND)

    _run(debug, body)


def forwarded_args(ctx: Any, *, drop: tuple[str, ...] = ()) -> list[str]:
    """The command line that gives a command every parameter ``ctx`` was given, but ``drop``.

    Read from the command's own parameters, so an option added to it is
    forwarded with no list to keep.
    """
    arguments: list[str] = []
    options: list[str] = []
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name)
        if param.name in drop or source is None or source.name in ("DEFAULT", "DEFAULT_MAP"):
            continue
        value = ctx.params[param.name]
        if param.param_type_name == "argument":
            arguments.append(str(value))
        elif param.is_flag and param.secondary_opts:
            options.append(param.opts[0] if value else param.secondary_opts[0])
        elif param.is_flag:
            options += [param.opts[0]] if value else []
        else:
            for item in value if param.multiple else [value]:
                options += [param.opts[0], str(getattr(item, "value", item))]
    return [*arguments, *options]


def _preflight(options: ModelOptions) -> None:
    """Load what every rank loads, once, before any rank starts: a mistake is one error."""
    from execorder.loading import resolve_target

    parse_assignments(options.init or [], option="--init")
    options.concrete_args()
    load_factory(options.inputs)
    resolve_target(options.target)


@app.command(cls=_Command)
def ranks(
    ctx: typer.Context,
    target: TargetArg,
    nproc: NprocOpt = None,
    concrete: ConcreteOpt = None,
    init: InitOpt = None,
    device: DeviceOpt = None,
    fmt: FormatOpt = OutputFormat.table,
    output: OutputOpt = None,
    fail_on: RanksFailOnOpt = None,
    mode: ModeOpt = Mode.EAGER,
    input: InputOpt = None,
    inputs: InputsOpt = None,
    backward: BackwardOpt = False,
    assume: AssumeOpt = True,
    seed: RankSeedOpt = None,
    timeout: TimeoutOpt = 300,
    debug: DebugOpt = False,
) -> None:
    """Find where the ranks of a job part, before it hangs the job.

    Runs one forward on every rank (eagerly), under torchrun (one process a
    rank) or started by --nproc N. Each rank records its own forward on its
    own inputs (an --inputs function may take rank and world_size keywords)
    with its own seed; the ranks exchange 48-byte digests over
    torch.distributed (gloo on CPU, NCCL on GPUs), and rank 0 shows whether
    they agree, the groups of ranks that behaved alike, the first module call
    where they part, and the parameters whose status (used, unused, dead)
    differs: what DDP and FSDP hang or fail on.

    Exit codes: 0 done; 1 --fail-on divergence and the ranks diverged; 2 a
    rank could not record its forward, or the job could not start; 130
    interrupted.
    """
    # Every rank builds with seed 0, as DDP starts every rank from the same
    # weights; --seed (or the rank) seeds the inputs and the run.
    model = dataclasses.replace(_model(ctx), seed=0 if seed is None else seed)
    in_job = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank = int(os.environ["RANK"]) if in_job else 0

    def check() -> None:  # before any rank starts
        if fail_on is not None and fail_on.strip() != "divergence":
            raise UsageError(f"--fail-on got {fail_on!r}; the only check is: divergence")
        if fmt in (OutputFormat.tree, OutputFormat.perfetto):
            raise UsageError(f"--format {fmt.value} applies to trace and fsdp, not ranks")
        if mode is not Mode.FX and not input and not inputs:
            raise UsageError(
                "ranks part on their data: give each rank its inputs with --input (drawn "
                "with each rank's seed) or --inputs MODULE:FUNCTION (it may take rank and "
                "world_size)"
            )
        if nproc is None and not in_job:
            raise UsageError(
                "execorder ranks runs as one process a rank: give --nproc N, or launch it "
                "with torchrun --nproc-per-node N -m execorder ranks TARGET ..."
            )
        if output is not None and rank == 0:
            files.check_writable(output)
        _preflight(model)

    if rank == 0:
        _run(debug, check)
    else:  # rank 0 says what is wrong, once; the others only leave as it does
        try:
            check()
        except Exception:
            raise typer.Exit(EXIT_ERROR) from None
    if nproc is not None and not in_job:
        from execorder.cli.launch import launch

        raise typer.Exit(launch(nproc, forwarded_args(ctx, drop=("nproc",)), timeout))

    def body() -> None:
        from execorder.output.views import ranks_view
        from execorder.ranks import compare_job

        def record(rank: int, world: int) -> Any:
            session = Session(
                model, input_keywords={"rank": rank, "world_size": world}, quiet=rank != 0
            )
            return session.run(model.concrete_args(), seed=seed if seed is not None else rank)

        def explain(exc: Exception) -> str:
            if isinstance(exc, ExecOrderError):
                return message(exc)
            return f"internal error: {type(exc).__name__}: {exc}"

        rank, result = compare_job(
            record,
            device=device.value if device else None,
            timeout=timeout,
            target=target,
            explain=explain,
        )
        if rank == 0:
            _emit(result, lambda: ranks_view(result), fmt, output, kind="rank comparison")
        if result.errors:
            if rank == 0:
                for failed in result.errors:
                    ranks_text = ", ".join(map(str, failed.ranks))
                    say(f"execorder: error: on rank {ranks_text}: {failed.error}")
            raise typer.Exit(EXIT_ERROR)
        if fail_on is not None and result.diverged:
            if rank == 0:
                say(f"execorder: check failed: divergence: {len(result.groups)} groups of ranks")
            raise typer.Exit(EXIT_FOUND)

    _run(debug, body)


def main() -> None:
    """Run the command line in this process; it leaves with ``SystemExit``."""
    app(prog_name="execorder")


def run() -> None:
    """The ``execorder`` program: the command line, then out without the interpreter's teardown.

    Everything is written and flushed by then. Tearing down the interpreter
    would free a large model object by object (0.9 s of CPU for a
    70B-shaped model on meta, as long as its forward) and join torch's
    threads, which gloo's can abort on (pytorch#179291): a program that is
    done has nothing left that the operating system does not do at once.
    """
    try:
        main()
        code: Any = 0
    except SystemExit as leaving:
        code = leaving.code
    if code is not None and not isinstance(code, int):
        say(str(code))
        code = EXIT_ERROR
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            _silence_stdout()
            code = code or EXIT_BROKEN_PIPE
    os._exit(code or 0)
