"""The ``execorder`` command line: the Typer app, how errors end a command, the program.

Each command is option parsing, one library call, rendering and an exit
code, in a module of its own: :mod:`.trace` (trace, diff, schema,
ddp-indices), :mod:`.fsdp`, :mod:`.ranks`; :mod:`.writing` writes what they
make. torch is imported only inside commands, so ``execorder --help`` (and
shell completion) stays instant."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperCommand, TyperGroup

from execorder import __version__
from execorder.cli.session import say
from execorder.cli.words import EXIT_BROKEN_PIPE, EXIT_ERROR, EXIT_INTERRUPTED, message
from execorder.errors import ExecOrderError

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


class Command(TyperCommand):
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


def run_command(debug: bool, body: Callable[[], T]) -> T:
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


# The commands register themselves on the app, in the order --help lists them.
# isort: off
import execorder.cli.trace  # noqa: E402
import execorder.cli.fsdp  # noqa: E402
import execorder.cli.ranks  # noqa: E402, F401
# isort: on
