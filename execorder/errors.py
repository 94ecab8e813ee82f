"""Domain errors. The CLI turns each into one line on stderr and an exit code."""

from __future__ import annotations


class ExecOrderError(Exception):
    """Base class for every error execorder reports to a user.

    The message is plain text (no markup) and names the problem; ``exit_code``
    is what the CLI exits with.
    """

    exit_code: int = 2


class ArgumentSyntaxError(ExecOrderError):
    """A ``NAME=VALUE`` option could not be parsed."""


class TargetError(ExecOrderError):
    """The ``TARGET`` could not be imported, found, or built into a module."""


class ConcreteArgError(ExecOrderError):
    """A concrete argument does not match the model's ``forward``."""


class TraceFailure(ExecOrderError):
    """Tracing the model's forward failed."""


class OutputError(ExecOrderError):
    """The report could not be written where the user asked."""
