"""Domain errors: what went wrong, as fields, and a message for whoever called.

Every error keeps its facts as attributes (the argument to pin, the valid
names, the failing call) and composes its message from them with a
:class:`Words` vocabulary: ``str(error)`` speaks Python (``concrete_args=
{'flag': ...}``); the command line passes its own vocabulary to
:meth:`ExecOrderError.describe` and gets the same message in flags
(``--concrete flag=VALUE``). Exit codes are the command line's business.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from enum import Enum
from typing import Protocol

from execorder.spelling import ddps_named, label, non_reentrant, size_text


class Arg(Enum):
    """The arguments an error may tell the caller to give or change."""

    CONCRETE = "concrete"  # a value for a forward() argument
    INIT = "init"  # a keyword argument of the model's constructor
    DEVICE = "device"
    MODE = "mode"
    INPUT = "input"  # an input tensor described by its size
    INPUTS = "inputs"  # real input values or a function making them
    BACKWARD = "backward"
    SWEEP = "sweep"
    TARGET = "target"
    UPDATE_BASELINE = "update-baseline"  # rewrite a stored report (the command line only)
    UNIT = "unit"  # an FSDP unit, by class or qualified name
    TIMING = "timing"  # measure each module call's time
    FORMAT = "format"  # what to write: a report's JSON, a timeline (the command line only)
    MAX_ROWS = "max-rows"  # how many rows a table shows
    DEPTH = "depth"  # how deep a call tree or table goes
    OUTPUT = "output"  # the file a report, plan or timeline is written to
    BASELINE = "baseline"  # the stored report a new one is compared with
    LAYOUT = "layout"  # which layout of FSDP units a plan follows
    MEMORY = "memory"  # measure a training step's memory
    MEMORY_BUDGET = "memory-budget"  # the bytes a training step must fit in


class Words(Protocol):
    """How a caller names an argument.

    ``names`` are the argument's keys when it has some (the forward
    arguments to pin), ``value`` the value to show when it matters;
    ``sep`` joins two arguments given together.
    """

    sep: str

    def arg(self, arg: Arg, *names: str, value: str | None = None) -> str: ...


class PythonWords:
    """Arguments as keyword arguments of :func:`execorder.profile`."""

    sep = ", "

    def arg(self, arg: Arg, *names: str, value: str | None = None) -> str:
        if arg in (Arg.CONCRETE, Arg.INIT):
            keyword = "concrete_args" if arg is Arg.CONCRETE else "init_kwargs"
            # A placeholder such as VALUE reads as ... in Python.
            shown = "..." if value is None or value.isupper() else value
            items = ", ".join(f"{n!r}: {shown}" for n in names)
            return f"{keyword}={{{items}}}" if names else keyword
        if arg in (Arg.DEVICE, Arg.MODE):
            return f"{arg.value}={value!r}" if value else arg.value
        if arg is Arg.INPUT:
            if names:
                return "input_size={" + ", ".join(f"{n!r}: ..." for n in names) + "}"
            return f"input_size={value!r}" if value and not value.isupper() else "input_size"
        if arg is Arg.BACKWARD:
            return "backward=True"
        if arg is Arg.SWEEP:
            return f"sweep axis {names[0]!r}" if names else "sweep axes"
        if arg is Arg.UPDATE_BASELINE:
            return ""
        if arg is Arg.TIMING:
            return "timing=True"
        if arg is Arg.UNIT:
            if names:
                return f"units={list(names)!r}"
            return f"units=[{value!r}]" if value else "units=[...]"
        if arg is Arg.LAYOUT:
            return f"layout={value!r}" if value else "layout"
        if arg is Arg.MEMORY:
            return f"memory={value!r}" if value else "memory"
        if arg is Arg.MEMORY_BUDGET:
            return "memory_budget"
        if arg in (Arg.MAX_ROWS, Arg.DEPTH):
            keyword = arg.value.replace("-", "_")
            return f"{keyword}={value}" if value else keyword
        if arg in (Arg.OUTPUT, Arg.BASELINE):
            return ""  # a Python caller named the path itself
        if arg is Arg.FORMAT:
            return {"json": "Report.to_dict()", "perfetto": "output.perfetto.timeline()"}.get(
                value or "", "the format"
            )
        return arg.value


PYTHON = PythonWords()


class ExecOrderError(Exception):
    """Base class for every error execorder reports to a user.

    ``str(error)`` is one line of plain text in Python's words; a subclass
    keeps its facts as attributes and builds the line in :meth:`describe`.
    """

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self._message = message

    def describe(self, words: Words = PYTHON) -> str:
        """The message, naming arguments with ``words``."""
        return self._message

    def __str__(self) -> str:
        return self.describe(PYTHON)

    def __reduce__(self) -> tuple[object, ...]:
        # Subclasses take their facts as keyword arguments, so pickle (which
        # calls the class with ``args``) rebuilds them from their fields instead.
        return (_rebuild, (type(self), self.__dict__))


def _rebuild(cls: type[ExecOrderError], fields: dict[str, object]) -> ExecOrderError:
    error = cls.__new__(cls)
    error.__dict__.update(fields)
    return error


def _names(names: Sequence[str]) -> str:
    return ", ".join(names) or "(none)"


def _ranks(ranks: Sequence[int]) -> str:
    """``rank 3``, ``ranks 0, 1``."""
    return f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {', '.join(map(str, ranks))}"


# -- the target ---------------------------------------------------------------


class TargetError(ExecOrderError):
    """The target could not be imported, found, or built into a module."""


class InitArgsError(TargetError):
    """The class or factory does not take the keyword arguments given.

    Attributes:
        what: The call, e.g. ``"Net()"``.
        missing: Required arguments without a value.
        problem: Python's complaint about the others, when nothing is missing.
        accepted: The arguments it accepts.
    """

    def __init__(
        self,
        what: str,
        *,
        missing: Sequence[str] = (),
        problem: str = "",
        accepted: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.what, self.missing = what, tuple(missing)
        self.problem, self.accepted = problem, tuple(accepted)

    def describe(self, words: Words = PYTHON) -> str:
        if self.missing:
            given = words.arg(Arg.INIT, *self.missing, value="VALUE")
            return f"{self.what} needs {', '.join(self.missing)}: pass {given}"
        return f"{self.what}: {self.problem}; it accepts: {_names(self.accepted)}"


class InstanceInitError(TargetError):
    """Init arguments were given for a target that is a module instance."""

    def __init__(self, attr: str) -> None:
        super().__init__()
        self.attr = attr

    def describe(self, words: Words = PYTHON) -> str:
        return (
            f"{self.attr} is a module instance, so {words.arg(Arg.INIT)} does not apply; "
            f"point {words.arg(Arg.TARGET)} at its class or a factory function instead"
        )


class InstanceDeviceError(TargetError):
    """A device asked for a module instance that lives on another one.

    Attributes:
        name: The instance.
        where: The device it is on.
        asked: The device asked for.
    """

    def __init__(self, name: str, where: str, asked: str) -> None:
        super().__init__()
        self.name, self.where, self.asked = name, where, asked

    def describe(self, words: Words = PYTHON) -> str:
        return (
            f"{self.name} is a module instance on {self.where}, so "
            f"{words.arg(Arg.DEVICE, value=self.asked)} does not apply: execorder moves "
            "nothing; move it yourself or point the target at its class"
        )


class BuildError(TargetError):
    """Building the model raised.

    Attributes:
        what: The call, e.g. ``"Net()"``.
        device: Where it was built.
        reason: The exception, one line.
        where: ``file:line`` of the user's code that raised, when known.
        chosen: Whether the caller chose ``device`` (else it was the fallback).
    """

    def __init__(self, what: str, device: str, reason: str, *, where: str, chosen: bool) -> None:
        super().__init__()
        self.what, self.device, self.reason = what, device, reason
        self.where, self.chosen = where, chosen

    def describe(self, words: Words = PYTHON) -> str:
        where = f" ({self.where})" if self.where else ""
        if not self.chosen:
            return f"building {self.what} failed{where}: {self.reason}"
        hint = f"; try {words.arg(Arg.DEVICE, value='cpu')}" if self.device == "meta" else ""
        return f"building {self.what} on {self.device} failed{where}: {self.reason}{hint}"


class DeviceError(ExecOrderError):
    """A device that does not exist, or one that is not available here.

    Attributes:
        device: The device asked for.
        choices: The devices execorder knows.
        unavailable: True when it is known but not available (CUDA).
    """

    def __init__(self, device: str, choices: Sequence[str], *, unavailable: bool = False) -> None:
        super().__init__()
        self.device, self.choices, self.unavailable = device, tuple(choices), unavailable

    def describe(self, words: Words = PYTHON) -> str:
        if self.unavailable:
            asked = words.arg(Arg.DEVICE, value=self.device)
            return f"{asked} was asked for but {self.device.upper()} is not available here"
        return f"unknown device {self.device!r}; choose one of: {', '.join(self.choices)}"


# -- inputs and arguments -----------------------------------------------------


class InputSpecError(ExecOrderError):
    """An input size could not be read.

    Attributes:
        text: What was given.
        problem: What is wrong with it.
    """

    def __init__(self, text: str, problem: str) -> None:
        super().__init__()
        self.text, self.problem = text, problem

    def describe(self, words: Words = PYTHON) -> str:
        return f"{words.arg(Arg.INPUT, value=self.text)}: {self.problem}"


class InputsError(ExecOrderError):
    """The inputs (or the function making them) cannot be used.

    Attributes:
        name: The function's name, or what the inputs were.
        problem: What is wrong.
    """

    def __init__(self, name: str, problem: str) -> None:
        super().__init__()
        self.name, self.problem = name, problem

    def describe(self, words: Words = PYTHON) -> str:
        return f"{words.arg(Arg.INPUTS)} {self.name} {self.problem}"


class ConcreteArgError(ExecOrderError):
    """An argument given for forward is not one of its arguments.

    Attributes:
        owner: ``Class.forward``.
        name: The argument given.
        valid: forward's argument names.
    """

    def __init__(self, owner: str, name: str, valid: Sequence[str]) -> None:
        super().__init__()
        self.owner, self.name, self.valid = owner, name, tuple(valid)

    def describe(self, words: Words = PYTHON) -> str:
        return (
            f"{self.owner} has no argument {self.name!r}; its arguments are: {_names(self.valid)}"
        )


class CallError(ExecOrderError):
    """forward cannot be called with the arguments given (checked before it runs).

    Attributes:
        owner: ``Class.forward``.
        missing: Required arguments that got no value.
        twice: Arguments given both positionally and by name.
        extra: How many positional arguments there are beyond what forward takes.
        takes: How many positional arguments forward takes.
    """

    def __init__(
        self,
        owner: str,
        *,
        missing: Sequence[str] = (),
        twice: Sequence[str] = (),
        extra: int = 0,
        takes: int = 0,
    ) -> None:
        super().__init__()
        self.owner, self.missing, self.twice = owner, tuple(missing), tuple(twice)
        self.extra, self.takes = extra, takes

    def describe(self, words: Words = PYTHON) -> str:
        if self.missing:
            names = ", ".join(self.missing)
            concrete = words.arg(Arg.CONCRETE, *self.missing, value="VALUE")
            size = words.arg(Arg.INPUT, value="NAME=DTYPE[D0,...]")
            return (
                f"{self.owner} needs {names}: give a value with {concrete}, or a tensor with {size}"
            )
        if self.twice:
            return f"{self.owner} got {', '.join(self.twice)} both by position and by name"
        given = self.takes + self.extra
        return (
            f"{self.owner} takes {self.takes} positional argument"
            f"{'' if self.takes == 1 else 's'}, but the inputs give {given}"
        )


class NeedsArgError(ExecOrderError):
    """An argument that means nothing without another.

    Attributes:
        arg: The argument given.
        needs: The one it needs.
    """

    def __init__(self, arg: Arg, needs: Arg) -> None:
        super().__init__()
        self.arg, self.needs = arg, needs

    def describe(self, words: Words = PYTHON) -> str:
        return f"{words.arg(self.arg)} needs {words.arg(self.needs)}"


class ModeError(ExecOrderError):
    """An argument that does not apply to the chosen mode.

    Attributes:
        arg: The argument (``Arg.BACKWARD``, ``Arg.INPUTS``), or None when the
            mode needs inputs that were not given.
        mode: The mode chosen.
        needs: With no ``arg``: the argument that runs forward for real and so
            needs the inputs (``Arg.MEMORY``, ``Arg.BACKWARD``, ``Arg.TIMING``),
            None for eager mode itself.
    """

    def __init__(self, arg: Arg | None, mode: str, *, needs: Arg | None = None) -> None:
        super().__init__()
        self.arg, self.mode, self.needs = arg, mode, needs

    def describe(self, words: Words = PYTHON) -> str:
        eager = words.arg(Arg.MODE, value="eager")
        if self.arg is None:
            size = words.arg(Arg.INPUT, value="NAME=DTYPE[D0,...]")
            factory = words.arg(Arg.INPUTS, value="MODULE:FUNCTION")
            runs = "eager mode runs" if self.needs is None else f"{words.arg(self.needs)} runs"
            return f"{runs} forward for real: give its inputs with {size} or {factory}"
        if self.arg in (Arg.BACKWARD, Arg.TIMING, Arg.MEMORY):
            return f"{words.arg(self.arg)} needs {eager} (or auto)"
        return f"{words.arg(Arg.INPUT)} and {words.arg(Arg.INPUTS)} apply to {eager} (or auto)"


# -- tracing and running ------------------------------------------------------


class TraceFailure(ExecOrderError):
    """Tracing or running the model's forward failed.

    Attributes:
        owner: ``Class.forward``.
        reason: What went wrong, one line, without advice.
        running: True for a real (eager) run, False for an FX trace.
    """

    def __init__(self, owner: str, reason: str, *, running: bool = False) -> None:
        super().__init__()
        self.owner, self.reason, self.running = owner, reason, running

    def hint(self, words: Words = PYTHON) -> str:
        """What to do about it, or ``""``."""
        return ""

    def describe(self, words: Words = PYTHON) -> str:
        hint = self.hint(words)
        action = "running" if self.running else "tracing"
        return f"While {action} {self.owner}: {self.reason}" + (f"; {hint}" if hint else "")


class ControlFlowError(TraceFailure):
    """FX met a branch on a traced value.

    Attributes:
        arguments: The forward arguments the value is computed from.
        direct: True when the branch tests an argument itself, not a value
            computed from it.
    """

    def __init__(self, owner: str, args: Sequence[str], *, direct: bool) -> None:
        self.arguments, self.direct = tuple(args), direct
        if len(self.arguments) == 1:
            subject = f"argument {self.arguments[0]!r}"
            reason = (
                f"control flow depends on {'' if direct else 'a value computed from '}{subject}"
            )
        elif self.arguments:
            reason = f"control flow depends on arguments {', '.join(map(repr, self.arguments))}"
        else:
            reason = "control flow depends on a traced value"
        super().__init__(owner, reason)

    def hint(self, words: Words = PYTHON) -> str:
        if len(self.arguments) == 1 and self.direct:
            return f"pin it with {words.arg(Arg.CONCRETE, self.arguments[0], value='VALUE')}"
        if len(self.arguments) == 1:
            pin = words.arg(Arg.CONCRETE, self.arguments[0], value="VALUE")
            return (
                f"if it is a flag or option, pin it with {pin}; "
                "FX cannot trace branches on tensor values"
            )
        if self.arguments:
            return f"pin the flags among them with {words.arg(Arg.CONCRETE, 'NAME', value='VALUE')}"
        return f"pin the arguments it needs with {words.arg(Arg.CONCRETE, 'NAME', value='VALUE')}"


class IterationError(TraceFailure):
    """FX met an iteration over a traced value (``for t in x``, ``*x.shape``).

    Attributes:
        node: The FX node iterated over.
    """

    def __init__(self, owner: str, node: str) -> None:
        self.node = node
        super().__init__(
            owner,
            f"forward iterates over a traced value ({node}), e.g. 'for t in x' or '*x.shape'; "
            "FX can only unpack a fixed number of items ('a, b = x.shape')",
        )

    def hint(self, words: Words = PYTHON) -> str:
        return f"pin the argument with {words.arg(Arg.CONCRETE)} if it is not a tensor"


class WrappedForwardError(TraceFailure):
    """FX cannot trace a forward wrapped by a decorator (transformers wraps every forward).

    Attributes:
        wrapper: The decorator's function name.
    """

    def __init__(self, owner: str, wrapper: str) -> None:
        self.wrapper = wrapper
        super().__init__(
            owner,
            f"forward is wrapped by a decorator ({wrapper}), which torch.fx cannot trace "
            "(transformers wraps its models' forwards; transformers 5 no longer supports FX)",
        )


class DifferentiatesError(TraceFailure):
    """Forward takes a derivative itself (``torch.autograd.grad``: a gradient penalty, a
    physics-informed loss): which parameters it depends on shows only when it runs (an
    additive bias drops out of a derivative), and torch.fx computes nothing."""

    def __init__(self, owner: str) -> None:
        super().__init__(
            owner,
            "forward takes a derivative (torch.autograd.grad); which parameters it depends "
            "on shows only when it runs, and torch.fx runs nothing",
        )


class ScriptedModuleError(TraceFailure):
    """Forward calls a TorchScript module with parameters: its code runs in C++, so torch.fx
    cannot see which of them it reads (a real run's gradient can).

    Attributes:
        module: The TorchScript module's qualified name.
        params: How many parameters it holds.
    """

    def __init__(self, owner: str, module: str, params: int) -> None:
        self.module, self.params = module, params
        noun = "parameter" if params == 1 else "parameters"
        super().__init__(
            owner,
            f"forward calls TorchScript module {module!r}, whose code runs in C++: torch.fx "
            f"cannot see which of its {params:,} {noun} it reads",
        )


class TooDeepError(TraceFailure):
    """The model nests modules deeper than Python's recursion limit lets torch go.

    Attributes:
        depth: How deeply its modules nest.
        limit: Python's recursion limit (``sys.getrecursionlimit()``).
    """

    def __init__(self, owner: str, depth: int, limit: int, *, running: bool) -> None:
        self.depth, self.limit = depth, limit
        who = "torch" if running else "torch.fx"
        super().__init__(
            owner,
            f"its modules nest {depth:,} deep, deeper than Python's recursion limit "
            f"({limit:,}) lets {who} go; {who} fails the same way without execorder",
            running=running,
        )


class LazyModulesError(TraceFailure):
    """FX cannot trace lazy modules: their parameters appear in the first forward."""

    def __init__(self, owner: str) -> None:
        super().__init__(
            owner, "its lazy modules (nn.LazyLinear, ...) have no parameters before a real forward"
        )


class ForwardError(TraceFailure):
    """The model's forward raised in a real (eager) run.

    Attributes:
        where: ``file:line`` of the user's code that raised, when known.
        device: Where it ran.
        inputs: The inputs it was given, as ``name=dtype[shape]``: a wrong
            dtype or shape is often the cause.
    """

    def __init__(
        self,
        owner: str,
        reason: str,
        *,
        where: str = "",
        device: str = "",
        inputs: Sequence[str] = (),
    ) -> None:
        super().__init__(owner, reason, running=True)
        self.where, self.device, self.inputs = where, device, tuple(inputs)

    def describe(self, words: Words = PYTHON) -> str:
        on = {"meta": " on the meta device", "": ""}.get(self.device, f" on {self.device}")
        where = f" ({self.where})" if self.where else ""
        given = f" with {', '.join(self.inputs)}" if self.inputs else ""
        return f"While running {self.owner}{on}{given}{where}: {self.reason}"


class MetaDeviceError(ForwardError):
    """Forward failed on the meta device because it needs real tensor values."""

    def __init__(self, owner: str, reason: str, *, where: str = "", **_: object) -> None:
        super().__init__(owner, reason, where=where, device="meta")

    def describe(self, words: Words = PYTHON) -> str:
        where = f" ({self.where})" if self.where else ""
        return (
            f"While running {self.owner} on the meta device{where}: {self.reason}. Its forward "
            "needs real tensor values (data-dependent control flow or indexing); "
            f"use {words.arg(Arg.DEVICE, value='cpu')}"
        )


class MemoryGuardError(ExecOrderError):
    """Building the model on a real device would not fit: execorder refuses to try.

    Attributes:
        what: The model (``"Llama()"``).
        device: Where it would have been built.
        needed: Bytes of its parameters and buffers; None when it could not be
            measured (its constructor needs real values) and ran out while built.
        available: Bytes available there.
        why: Why it would have been built there (a fallback's reason), if it was not asked for.
        ranks: The ranks of a job on this host, which share its memory:
            ``available`` is one's share.
        running: What ran out of it, when the model was built and something
            ran (``"a forward"``); None when the build did.
    """

    def __init__(
        self,
        what: str,
        device: str,
        needed: int | None,
        available: int,
        *,
        why: str = "",
        ranks: int = 1,
        running: str | None = None,
    ) -> None:
        super().__init__()
        self.what, self.device, self.needed, self.available = what, device, needed, available
        self.why, self.ranks, self.running = why, ranks, running

    def describe(self, words: Words = PYTHON) -> str:
        because = (
            f"forward needs real values on the meta device ({self.why}), but " if self.why else ""
        )
        cuda = words.arg(Arg.DEVICE, value="cuda")
        advice = f"try a smaller configuration ({words.arg(Arg.INIT)}, fewer layers)" + (
            "" if self.device == "cuda" else f", or {cuda}"
        )
        share = f" to each of the {self.ranks} ranks on this host" if self.ranks > 1 else ""
        if self.running is not None:
            meta = words.arg(Arg.DEVICE, value="meta")
            return (
                f"{self.running} of {self.what} on {self.device} ran out of the about "
                f"{size_text(self.available)} available{share}: give it smaller inputs, or run "
                f"it on the meta device ({meta}), where {words.arg(Arg.MEMORY)} measures what "
                "a training step holds without using any"
            )
        if self.needed is None:
            return (
                f"building {self.what} on {self.device} (it cannot be built on the meta device "
                f"to be measured) ran out of the about {size_text(self.available)} "
                f"available{share}: {advice}"
            )
        return (
            f"{because}building {self.what} on {self.device} needs about {size_text(self.needed)} "
            f"for its parameters and buffers alone, and about {size_text(self.available)} is "
            f"available{share}: {advice}"
        )


class NeedsInputsError(TraceFailure):
    """FX failed in auto mode, and no inputs were given to run forward for real.

    Attributes:
        cause: The FX failure.
    """

    def __init__(self, cause: TraceFailure) -> None:
        super().__init__(cause.owner, cause.reason)
        self.cause = cause

    def describe(self, words: Words = PYTHON) -> str:
        eager = words.arg(Arg.MODE, value="eager")
        cause = self.cause
        names: tuple[str, ...] = ()
        if isinstance(cause, ControlFlowError) and len(cause.arguments) == 1 and not cause.direct:
            names = cause.arguments  # a value computed from it is branched on: a tensor, likely
        inputs = words.arg(Arg.INPUT, *names, value="NAME=DTYPE[D0,...]")
        said = cause.describe(words).rstrip(".")
        return f"{said}. Or run forward for real: {eager}{words.sep}{inputs}"


class UserExitError(ExecOrderError):
    """The model's own code called ``sys.exit()``: never a silent exit, nor a success.

    Attributes:
        code: What it passed to ``sys.exit``.
        during: What execorder was doing (``"importing models.py"``).
        where: ``file:line`` of the call, when known.
    """

    def __init__(self, code: object, during: str, where: str = "") -> None:
        super().__init__()
        self.code, self.during, self.where = code, during, where

    def describe(self, words: Words = PYTHON) -> str:
        where = f" ({self.where})" if self.where else ""
        arg = "" if self.code is None else repr(self.code)
        return f"the model's code called sys.exit({arg}) while {self.during}{where}"


@contextmanager
def user_code(during: str) -> Iterator[None]:
    """Run the user's code: a ``sys.exit()`` in it becomes a :class:`UserExitError`."""
    try:
        yield
    except SystemExit as exc:
        raise UserExitError(exc.code, during, user_frame(exc)) from exc


class RecordingError(ExecOrderError):
    """``record()`` was used in a way that cannot give a report."""


# -- inside a training job ----------------------------------------------------


def _joined(names: Sequence[str], shown: int = 4) -> str:
    """``a, b, c and d``, the first ``shown`` names, with how many more."""
    listed = [*names[:shown], *[f"{len(names) - shown} more"] * (len(names) > shown)]
    return ", ".join(listed[:-1]) + " and " * (len(listed) > 1) + listed[-1]


class NoGradientError(ExecOrderError):
    """A recorded training step left trainable parameters without a gradient.

    Raised by the training-loop callbacks where DDP fails on it: under
    ``DistributedDataParallel`` with ``find_unused_parameters=False`` (and no
    ``static_graph``) the next step raises "Expected to have finished
    reduction in the prior iteration before starting a new one".

    Attributes:
        step: The training step recorded (1 for the first).
        params: The parameters without a gradient, by qualified name.
        ddp_indices: Their indices as DDP's errors number them, in the same order
            (None for one no DDP registers).
        under_ddp: Whether the step ran under such a DDP (else the callback
            was asked to stop on any parameter without a gradient).
        recompute_only: Parameters whose gradient only reentrant checkpoints'
            recomputes give (``Report.recompute_only``): with them,
            ``find_unused_parameters=True`` fails too.
        never_recomputed: Those of ``params`` forward read only inside
            reentrant checkpoints none of whose inputs needed grad, which torch
            never recomputes (``Report.never_recomputed``).
        inside: The modules inside the model whose own DDP fails on them
            (``DDP(model.encoder)`` or ``replicate(model.encoder)``), by
            name; empty where that DDP runs the model. Indices are then
            those of each module's DDP.
        rank: The rank that stopped on its own, without the others (None where
            every rank decided together): its DDP stopped reducing part-way, so
            it sent nothing more, and ranks that gave these parameters a gradient
            wait for it in backward.
        static_graph: Whether the DDP that fails on them does so under
            ``static_graph=True``: it took them for used in its first step (they
            got a gradient there, or an output the loss does not read reaches
            them), and waits for them in every step. None where it searches for
            unused parameters and still did not finish reducing, by its own check.
    """

    def __init__(
        self,
        step: int,
        params: Sequence[str],
        ddp_indices: Sequence[int | None],
        *,
        under_ddp: bool,
        recompute_only: Sequence[str] = (),
        inside: Sequence[str] = (),
        rank: int | None = None,
        static_graph: bool | None = False,
        never_recomputed: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.static_graph = static_graph
        self.step, self.params = step, tuple(params)
        self.ddp_indices, self.under_ddp = tuple(ddp_indices), under_ddp
        self.recompute_only = tuple(recompute_only)
        self.never_recomputed = tuple(never_recomputed)
        self.inside = tuple(inside)
        self.rank = rank

    def describe(self, words: Words = PYTHON) -> str:
        count = len(self.params)
        indices = [*self.ddp_indices, *[None] * count][:count]
        listed = ", ".join(
            name if index is None else f"{name} (DDP index {index})"
            for name, index in zip(self.params[:8], indices, strict=False)
        )
        more = f", +{count - 8} more" if count > 8 else ""
        noun = "parameter" if count == 1 else "parameters"
        where = "" if self.rank is None else f" on rank {self.rank}"
        text = f"step {self.step}: {count} trainable {noun} got no gradient{where}: {listed}{more}"
        around = "the model"
        setting, why = "find_unused_parameters=False", ""
        if self.static_graph:
            setting = "static_graph=True"
            why = ": it took them for used in its first step, and waits for them in every step"
        elif self.static_graph is None:
            setting = "find_unused_parameters=True"
            why = ": it did not finish reducing this step, by its own check"
        expected = ' ("Expected to have finished reduction in the prior iteration")'
        if self.inside:
            around = _joined(self.inside)
            ddps, fail = ("DDPs", "fail") if len(self.inside) > 1 else ("DDP", "fails")
            text += f"; the {ddps} around {around} ({setting}) {fail} on them at the next step"
            text += f"{why}{expected}"
        elif self.under_ddp:
            text += f"; DDP ({setting}) fails on them at the next step{why}{expected}"
        if self.never_recomputed:
            never = len(self.never_recomputed)
            which = "they are" if never == count else f"{never} of them are"
            text += (
                f"; {which} read only inside reentrant checkpoints none of whose inputs needs "
                "grad, which torch never recomputes in backward: use use_reentrant=False, or "
                "make an input of each block need grad (enable_input_require_grads())"
            )
        if self.static_graph:
            return text + (
                f". Use them in every step, freeze them (requires_grad_(False)), or wrap {around} "
                "with find_unused_parameters=True instead of static_graph=True"
            )
        if self.static_graph is None:
            return text + ". Use them in the loss, or freeze them (requires_grad_(False))"
        if self.recompute_only:  # DDP's search for unused parameters misses those
            count = len(self.recompute_only)
            return text + (
                f". Use them in the loss, freeze them (requires_grad_(False)), or wrap {around} "
                f"with static_graph=True (find_unused_parameters=True fails here: {count} other "
                f"{'parameter gets its' if count == 1 else 'parameters get their'} gradient only "
                "from reentrant checkpoints' recomputes, which it takes for unused)"
            )
        return text + (
            ". Use them in the loss, freeze them (requires_grad_(False)), "
            f"or wrap {around} with find_unused_parameters=True"
        )


class DdpBuiltError(ExecOrderError):
    """A recorded training step ran under a ``DistributedDataParallel`` built for other
    trainable parameters: ``requires_grad`` was turned on or off after DDP wrapped the model.

    DDP registers the parameters that require grad once, when it is built. It
    still waits for one frozen since: without ``find_unused_parameters`` or
    ``static_graph`` the next step fails. It never all-reduces one made
    trainable since: the ranks' copies drift apart, with no error.

    Attributes:
        step: The training step recorded (1 for the first).
        then: The parameters DDP registered when built, and their bytes.
        now: The parameters it would register now, and their bytes.
        waits: Whether DDP waits for every parameter it registered
            (``find_unused_parameters=False``, no ``static_graph``).
    """

    def __init__(
        self, step: int, then: tuple[int, int], now: tuple[int, int], *, waits: bool
    ) -> None:
        super().__init__()
        self.step, self.then, self.now, self.waits = step, then, now, waits

    def describe(self, words: Words = PYTHON) -> str:
        (count, size), (count_now, size_now) = self.then, self.now
        waited = (
            ': it fails at the next step ("Expected to have finished reduction in the prior '
            'iteration")'
            if self.waits
            else ""
        )
        drift = ": the ranks' copies drift apart, with no error"
        if count > count_now:
            what = (
                f"at least {count - count_now} were frozen since, which DDP still waits for{waited}"
            )
        elif count < count_now:
            made = count_now - count
            what = f"at least {made} were made trainable since, which DDP never all-reduces{drift}"
        else:
            frozen = f"those frozen since DDP still waits for{waited}, and " if self.waits else ""
            what = (
                f"not the same ones: {frozen}those made trainable since it never all-reduces{drift}"
            )
        return (
            f"step {self.step}: DDP was built when {count:,} parameters required grad "
            f"({size_text(size)}); {count_now:,} do now ({size_text(size_now)}): {what}. "
            "Set requires_grad before wrapping the model with DDP, or wrap it again after"
        )


class SplitGradientError(ExecOrderError):
    """A recorded training step gave trainable parameters their gradient in several passes.

    A reentrant checkpoint's block runs a backward pass of its own: a
    parameter used inside one and elsewhere gets its gradient in parts.
    ``DistributedDataParallel`` without ``static_graph`` marks a parameter
    ready once a step: it raises ("Expected to mark a variable ready only
    once"), or, when the first pass completes every bucket, all-reduces then
    and adds the rest unreduced, so the ranks' replicas drift apart silently.
    A step that calls backward several times over one forward
    (``loss_a.backward(retain_graph=True)``, then ``loss_b.backward()``)
    splits gradients too, and DDP fails on those or drifts under every
    setting, ``static_graph=True`` too.

    Attributes:
        step: The training step recorded (1 for the first).
        params: The parameters, by qualified name, with their number of passes.
        under_ddp: Whether the step ran under such a DDP (else the callback
            was asked to stop on it always).
        checkpoints: The model's own checkpoint Functions that ran
            (``use_reentrant`` is no option of theirs); empty for torch's.
        by_backwards: Those of ``params`` whose parts come from several
            backward calls of the caller's own (:attr:`Report.split_by_backwards`).
    """

    def __init__(
        self,
        step: int,
        params: Mapping[str, int],
        *,
        under_ddp: bool,
        checkpoints: Sequence[str] = (),
        by_backwards: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.step, self.params, self.under_ddp = step, dict(params), under_ddp
        self.checkpoints = tuple(checkpoints)
        self.by_backwards = tuple(by_backwards)

    def describe(self, words: Words = PYTHON) -> str:
        count = len(self.params)
        listed = ", ".join(f"{name} ({n} passes)" for name, n in list(self.params.items())[:8])
        more = f", +{count - 8} more" if count > 8 else ""
        noun = "parameter" if count == 1 else "parameters"
        reentrant = set(self.params) - set(self.by_backwards)
        causes = []
        if self.by_backwards:
            causes.append("backward ran more than once over one forward")
        if reentrant:
            causes.append("reentrant checkpoints run their own")
        text = (
            f"step {self.step}: {count} trainable {noun} got their gradient in several "
            f"backward passes ({' and '.join(causes)}): {listed}{more}"
        )
        advice = []
        if self.by_backwards:
            if self.under_ddp:
                text += (
                    "; DDP reduces a parameter once a forward, static_graph=True too: the next "
                    "step fails, or the ranks' gradients already differ"
                )
            advice.append("add the losses and call backward once, (loss_a + loss_b).backward()")
        elif self.under_ddp:
            text += (
                "; DDP all-reduced them before the last part arrived, so the ranks' "
                "gradients differ"
            )
        if reentrant:
            advice.append(f"{non_reentrant(self.checkpoints)}, or DDP(static_graph=True)")
        first = "; ".join(advice)
        return f"{text}. {first[0].upper()}{first[1:]}"


class StepParamsError(ExecOrderError):
    """What a recorded training step did to some parameters, named.

    Attributes:
        step: The training step recorded (1 for the first).
        params: The parameters, by qualified name.
    """

    def __init__(self, step: int, params: Sequence[str]) -> None:
        super().__init__()
        self.step, self.params = step, tuple(params)

    def _counted(self) -> tuple[str, str]:
        """``N trainable parameters`` and the first eight names, with how many more."""
        count = len(self.params)
        names = ", ".join(self.params[:8]) + (f", +{count - 8} more" if count > 8 else "")
        return f"{count} trainable {'parameter' if count == 1 else 'parameters'}", names


class UnreducedGradientError(StepParamsError):
    """A recorded first step under ``DistributedDataParallel(static_graph=True)`` gave
    parameters their gradient only after DDP all-reduced.

    In its first step, DDP with ``static_graph=True`` all-reduces when the first
    backward through forward's outputs ends. A step that runs one before its
    loss's backward (a gradient penalty's ``torch.autograd.grad``) gets its
    gradients later, and DDP never all-reduces them: the ranks drift apart,
    with no error. Without ``static_graph`` DDP reduces them in that backward.
    ``params`` are :attr:`Report.ddp_unreduced`.
    """

    def describe(self, words: Words = PYTHON) -> str:
        counted, names = self._counted()
        return (
            f"step {self.step}: {counted} got their gradient only after the first backward "
            "through forward's outputs (an autograd.grad before the loss's backward): "
            f"{names}; DDP with static_graph=True all-reduces at the end of that one in its "
            "first step, so these are never all-reduced and the ranks drift apart. Wrap the "
            "model without static_graph=True"
        )


class GradientsDifferError(StepParamsError):
    """After a recorded step's backward under ``DistributedDataParallel``, the ranks hold
    different gradients of some parameters it registers: it did not reduce them.

    DDP averages every registered parameter's gradient over its ranks in backward, so
    each rank holds the same one after it. One that differs got a part DDP did not
    reduce (a backward of its own after the loss's, reading the batch but not through
    forward's outputs; ``requires_grad`` turned on after DDP wrapped the model), and the
    ranks' replicas drift apart from here, with no error. ``params`` are in DDP's order.

    Attributes:
        static_graph: Whether the DDP has ``static_graph=True``, whose first step fixes
            its graph for good: a parameter that got no gradient there is not reduced
            when it gets one later.
    """

    def __init__(self, step: int, params: Sequence[str], *, static_graph: bool = False) -> None:
        super().__init__(step, params)
        self.static_graph = static_graph

    def describe(self, words: Words = PYTHON) -> str:
        counted, names = self._counted()
        causes = (
            "a part from a backward that does not run through forward's outputs, "
            "requires_grad set after DDP wrapped the model"
        )
        if self.static_graph:
            causes += ", a parameter that got no gradient in static_graph=True's first step"
        return (
            f"step {self.step}: after DDP's all-reduce the ranks hold different gradients of "
            f"{counted}: {names}; DDP did not reduce a part of them ({causes}), so the ranks' "
            "replicas drift apart from here, with no error"
        )


class GradientsApartError(StepParamsError):
    """At a recorded step under FSDP2 (``fully_shard``, or its ``replicate``), some ranks gave
    trainable parameters a gradient and others did not (an expert that no token of one rank
    reached). FSDP2 reduces each unit's gradients as one buffer of the parameters that got
    one, so ranks with different sets pair one parameter's gradient with another's: where
    the buffers' sizes agree, with no error, and the gradients are wrong from this step on
    (where they differ, the backward hangs or aborts, and no step is recorded).
    ``params`` are in ``parameters()`` order."""

    def describe(self, words: Words = PYTHON) -> str:
        counted, names = self._counted()
        return (
            f"step {self.step}: under FSDP2 the ranks gave gradients to different parameters: "
            f"{counted} got one on some ranks and none on others: {names}; FSDP2 reduces each "
            "unit's gradients as one buffer of those that got one, so the ranks' buffers "
            "paired one parameter's gradient with another's, with no error, and the gradients "
            "are wrong from here on. Give each of them a gradient on every rank or on none (an "
            "expert no token of a rank reached: run it on zero tokens), or have FSDP2 reduce "
            "zeros for them (set_reduce_scatter_unused_params(True) on the units, where torch "
            "has it)"
        )


class NotReplicatedError(StepParamsError):
    """At a recorded step of a model whose DDPs run modules inside it (``DDP(model.encoder)``
    put in its place, ``replicate(model.encoder)``), the ranks hold different gradients or
    copies of trainable parameters that no DDP registers: nothing averages them, and each
    rank trains its own, with no error.

    Attributes:
        inside: The modules the DDPs run, by name.
    """

    def __init__(self, step: int, params: Sequence[str], *, inside: Sequence[str]) -> None:
        super().__init__(step, params)
        self.inside = tuple(inside)

    def describe(self, words: Words = PYTHON) -> str:
        counted, names = self._counted()
        ddps = "the DDPs around" if len(self.inside) > 1 else "the DDP around"
        return (
            f"step {self.step}: the ranks hold different gradients or copies of {counted} that "
            f"no DDP registers: {names}; {ddps} {_joined(self.inside)} average only their own, "
            "so each rank "
            "trains these apart, with no error. Wrap the model in one DDP, or freeze them"
        )


class ReplicasDifferError(StepParamsError):
    """At a recorded step under ``DistributedDataParallel``, the ranks' copies of some
    parameters it registers already differ: an earlier step let a part of their gradients
    through unreduced (or something changed one rank's copy), and the ranks train apart.

    DDP makes every rank's copy the same when it is built and keeps them so by averaging
    every gradient; nothing it does lets them part. ``params`` are in DDP's order.
    """

    def describe(self, words: Words = PYTHON) -> str:
        counted, names = self._counted()
        return (
            f"step {self.step}: the ranks' copies of {counted} already differ: {names}; DDP "
            "keeps them equal by averaging every gradient, so an earlier step left a part "
            "of theirs unreduced (or changed one rank's copy), and the ranks train apart with "
            "no error. Record the steps before it (compare_every=1) to find which"
        )


class RanksDivergedError(ExecOrderError):
    """The ranks of a job ran different forwards at a recorded training step.

    Attributes:
        step: The training step recorded.
        groups: The ranks of each group that behaved alike.
        call: The index of the first module call where they part (None when
            only the parameters' statuses differ).
        by_group: What each group ran at that call (None where it had ended).
        params: Parameters whose status differs across the groups.
        errors: The ranks of each group that could not record, and why.
    """

    def __init__(
        self,
        step: int,
        groups: Sequence[Sequence[int]],
        *,
        call: int | None,
        by_group: Sequence[str | None],
        params: Sequence[str],
        errors: Sequence[tuple[Sequence[int], str]] = (),
    ) -> None:
        super().__init__()
        self.step, self.groups = step, tuple(tuple(g) for g in groups)
        self.call, self.by_group, self.params = call, tuple(by_group), tuple(params)
        self.errors = tuple((tuple(ranks), why) for ranks, why in errors)

    def describe(self, words: Words = PYTHON) -> str:
        if self.errors:
            failed = "; ".join(f"{_ranks(ranks)}: {why}" for ranks, why in self.errors)
            return f"step {self.step}: the ranks cannot be compared ({failed})"
        text = f"step {self.step}: the ranks diverged ({len(self.groups)} groups)"
        if self.call is not None:
            ran = "; ".join(
                f"{_ranks(ranks)} " + (f"ran {label(name)}" if name is not None else "had ended")
                for ranks, name in zip(self.groups, self.by_group, strict=True)
            )
            text += f", first at module call #{self.call}: {ran}"
        if self.params:
            shown = ", ".join(self.params[:8]) + (
                f", +{len(self.params) - 8} more" if len(self.params) > 8 else ""
            )
            text += f"; parameters whose status differs: {shown}"
        return text + "; DDP and FSDP hang, fail or mix up gradients on this"


class DdpWaitingError(ExecOrderError):
    """A report to compare across ranks comes from a step whose DDP, on this rank, had not
    finished reducing its gradients (``Report.ddp_waiting``): it waits for a gradient that
    did not come, so its all-reduces stopped part-way here, and a comparison sent now would
    pair with another rank's all-reduce of gradients. Nothing was sent; DDP fails at the
    next step on this rank.

    Attributes:
        ddps: The DDPs waiting: ``""`` for the one around the model, else a module's name.
        params: The trainable parameters that got no gradient here.
    """

    def __init__(self, ddps: Sequence[str], params: Sequence[str]) -> None:
        super().__init__()
        self.ddps, self.params = tuple(ddps), tuple(params)

    def describe(self, words: Words = PYTHON) -> str:
        around = ddps_named(self.ddps)
        named = f" ({_joined(self.params, 8)})" if self.params else ""
        return (
            f"not compared: on this rank the DDP around {around} did not finish reducing the "
            f"step's gradients, waiting for some that did not come{named}; it fails at the "
            "next step, and its all-reduces stopped part-way here, so a comparison sent now "
            "would pair with another rank's all-reduce of gradients (a hang, or an abort): "
            "nothing was sent"
        )


# -- sweeps, reports, DDP -----------------------------------------------------


class SweepAxisError(ExecOrderError):
    """A swept argument given twice, or both swept and fixed.

    Attributes:
        name: The argument.
        fixed: True when it is also fixed; False when it is swept twice.
    """

    def __init__(self, name: str, *, fixed: bool) -> None:
        super().__init__()
        self.name, self.fixed = name, fixed

    def describe(self, words: Words = PYTHON) -> str:
        if self.fixed:
            return (
                f"{self.name} is both swept ({words.arg(Arg.SWEEP)}) and fixed "
                f"({words.arg(Arg.CONCRETE)})"
            )
        return f"{words.arg(Arg.SWEEP, self.name)} is given more than once"


class SweepMemoryError(ExecOrderError):
    """A sweep asked to measure a training step's memory, which is one run's."""

    def describe(self, words: Words = PYTHON) -> str:
        return (
            f"{words.arg(Arg.MEMORY)} measures one run's training step: "
            f"not with {words.arg(Arg.SWEEP)}"
        )


class SweepFailure(ExecOrderError):
    """One combination of a sweep could not be traced.

    Attributes:
        combination: Its arguments.
        cause: Why.
    """

    def __init__(self, combination: dict[str, object], cause: ExecOrderError) -> None:
        super().__init__()
        self.combination, self.cause = combination, cause

    def describe(self, words: Words = PYTHON) -> str:
        where = ", ".join(f"{k}={v!r}" for k, v in self.combination.items())
        return f"with {where}: {self.cause.describe(words)}"


class ReportFileError(ExecOrderError):
    """A report file is missing, not JSON, or not a report this execorder reads."""


class OutputFileError(ExecOrderError):
    """A file cannot be written where it was asked for.

    Attributes:
        path: The file.
        problem: What is wrong, as it follows the path (``": permission denied"``).
        arg: The argument that named the file.
    """

    def __init__(self, path: str, problem: str, *, arg: Arg = Arg.OUTPUT) -> None:
        super().__init__()
        self.path, self.problem, self.arg = path, problem, arg

    def describe(self, words: Words = PYTHON) -> str:
        named = words.arg(self.arg)
        return f"{named} {self.path}{self.problem}" if named else f"{self.path}{self.problem}"


class TimelineFileError(ReportFileError):
    """A file given as a report is a Perfetto timeline (Trace Event JSON) instead.

    Attributes:
        path: The file.
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def describe(self, words: Words = PYTHON) -> str:
        return (
            f"{self.path}: not a trace report: a Perfetto timeline "
            f"({words.arg(Arg.FORMAT, value='perfetto')}); diff the "
            f"{words.arg(Arg.FORMAT, value='json')} reports instead"
        )


class ReportVersionError(ReportFileError):
    """A report file of another ``schema_version``.

    Attributes:
        path: The file.
        found: Its ``schema_version``.
        expected: The version this execorder reads.
    """

    def __init__(self, path: str, found: object, expected: int) -> None:
        super().__init__()
        self.path, self.found, self.expected = path, found, expected

    def describe(self, words: Words = PYTHON) -> str:
        how = words.arg(Arg.UPDATE_BASELINE)
        return (
            f"{self.path}: report has schema_version {self.found!r}, this execorder reads "
            f"{self.expected}; regenerate it with this version" + (f" (e.g. {how})" if how else "")
        )


class SchemaError(ExecOrderError, ValueError):
    """A dict is not a report of a schema version this execorder reads."""


class IndicesError(ExecOrderError):
    """DDP's parameter indices could not be read, or do not fit the model.

    Attributes:
        index: The index beyond the model's trainable parameters, if that is
            the problem.
        count: How many trainable parameters the model has.
    """

    def __init__(self, message: str = "", *, index: int | None = None, count: int = 0) -> None:
        super().__init__(message)
        self.index, self.count = index, count

    def describe(self, words: Words = PYTHON) -> str:
        if self.index is None:
            return self._message
        return (
            f"index {self.index} is out of range: the model has {self.count} trainable "
            f"parameters (0 to {self.count - 1}); were the same {words.arg(Arg.INIT)} and "
            f"{words.arg(Arg.CONCRETE)} values used as in the failing run?"
        )


class TimingDeviceError(ExecOrderError):
    """Timing was asked for on the meta device, where nothing runs."""

    def describe(self, words: Words = PYTHON) -> str:
        return (
            f"{words.arg(Arg.TIMING)} needs a device where forward really runs: "
            f"{words.arg(Arg.DEVICE, value='cpu')} or {words.arg(Arg.DEVICE, value='cuda')}, "
            "not meta"
        )


# -- FSDP plans ------------------------------------------------------------------


class UnitError(ExecOrderError):
    """A unit asked for matches no module of the model, or cannot be a unit.

    Attributes:
        name: The class name or qualified name asked for (a group's, joined
            by ``+``).
        classes: The block classes the model has (candidates to suggest).
        problem: What is wrong with it; empty when it matches no module.
    """

    def __init__(self, name: str, *, classes: Sequence[str] = (), problem: str = "") -> None:
        super().__init__()
        self.name, self.classes, self.problem = name, tuple(classes), problem

    def describe(self, words: Words = PYTHON) -> str:
        given = words.arg(Arg.UNIT, value=self.name)
        if self.problem:
            return f"{given}: {self.problem}"
        text = f"{given}: no module of the model has that class or qualified name"
        if self.classes:
            text += f"; its block classes: {', '.join(self.classes)}"
        return text


class LayoutError(ExecOrderError):
    """A layout of units that the model does not have the parts for.

    Attributes:
        layout: The layout asked for.
        missing: The parts it needs that the model lacks.
    """

    def __init__(self, layout: str, missing: Sequence[str]) -> None:
        super().__init__()
        self.layout, self.missing = layout, tuple(missing)

    def describe(self, words: Words = PYTHON) -> str:
        return (
            f"{words.arg(Arg.LAYOUT, value=self.layout)} shards a decoder: its input "
            f"embedding, its blocks, its final norm and output head; this model has no "
            f"{' and no '.join(self.missing)} that execorder can find (name the units "
            f"with {words.arg(Arg.UNIT)} instead)"
        )


class LayoutUnitsError(ExecOrderError):
    """Units named beside a layout other than the default, which chooses the units itself.

    Attributes:
        layout: The layout asked for.
    """

    def __init__(self, layout: str) -> None:
        super().__init__()
        self.layout = layout

    def describe(self, words: Words = PYTHON) -> str:
        return (
            f"{words.arg(Arg.LAYOUT, value=self.layout)} chooses the units itself: "
            f"not with {words.arg(Arg.UNIT)}"
        )


class PlanMemoryError(ExecOrderError):
    """What one rank of a plan holds cannot be measured.

    Attributes:
        reason: Why.
    """

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason

    def describe(self, words: Words = PYTHON) -> str:
        return f"cannot measure one rank's memory under the plan: {self.reason}"


class PlanMismatchError(ExecOrderError):
    """An FSDP plan does not fit the model it is applied to.

    Attributes:
        problems: What does not fit, one line each.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__()
        self.problems = tuple(problems)

    def describe(self, words: Words = PYTHON) -> str:
        shown = "; ".join(self.problems[:4])
        more = f"; and {len(self.problems) - 4} more" if len(self.problems) > 4 else ""
        return f"the FSDP plan does not fit this model: {shown}{more}"


def user_frame(exc: BaseException) -> str:
    """``file.py:line`` of the innermost frame of the user's code in a traceback, or ``""``.

    Frames of torch and of execorder itself are not the user's.
    """
    import traceback
    from pathlib import Path

    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if "/torch/" not in f.filename and "/execorder/" not in f.filename
    ]
    return f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""


def user_site() -> str:
    """``file.py:line`` of the innermost frame of the user's code running now, or ``""``
    (not torch's, execorder's or Python's ``random``, whose methods draw for the user)."""
    import random
    import sys
    from pathlib import Path

    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_code.co_filename
        if "/torch/" not in name and "/execorder/" not in name and name != random.__file__:
            return f"{Path(name).name}:{frame.f_lineno}"
        frame = frame.f_back  # type: ignore[assignment]
    return ""


def first_line(exc: BaseException) -> str:
    """``Type: message``, its first line only."""
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0] if text else type(exc).__name__
