"""The command line's vocabulary: library errors, told in flags, with an exit code."""

from __future__ import annotations

from execorder.errors import Arg, ExecOrderError


class CliWords:
    """Arguments as the command line's options: ``--concrete flag=VALUE``."""

    sep = " "

    def arg(self, arg: Arg, *names: str, value: str | None = None) -> str:
        if arg is Arg.TARGET:
            return "TARGET"
        flag = f"--{arg.value}"  # each Arg is named as its option is
        if arg in (Arg.CONCRETE, Arg.INIT) and names:
            return " ".join(f"{flag} {name}={value or 'VALUE'}" for name in names)
        if arg is Arg.SWEEP and names:
            return f"{flag} {names[0]}"
        if arg is Arg.INPUT and names:
            return " ".join(f"{flag} {name}=DTYPE[D0,...]" for name in names)
        if arg is Arg.UNIT and names:
            return f"{flag} {', '.join(names)}"
        return f"{flag} {value}" if value else flag


CLI = CliWords()


class UsageError(ExecOrderError):
    """An option's value or a combination of options that cannot work."""


def message(exc: ExecOrderError) -> str:
    """The one line the command line prints for a library error."""
    return exc.describe(CLI)


EXIT_OK, EXIT_FOUND, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 0, 1, 2, 130, 141
"""Exit codes: done; a check found something or a baseline differs; the
report could not be made; interrupted (Ctrl-C); the reader of stdout closed
it (| head), as SIGPIPE would end a Unix tool."""
