"""The one entry point: profile a model, applying the mode and device policy.

:func:`profile` (and :class:`Profiler`, for several runs of one model) take a
model, a class or factory, or a ``TARGET`` text, and decide what the command
line decides: run forward eagerly on the inputs given, or trace it with
torch.fx when there are none (``auto``); build on the meta device and fall
back to CPU when building or running needs real values.
Every fallback taken is a :class:`Note` in the result, as data; nothing is
printed.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from execorder.backends import eager, fx, memory
from execorder.backends.common import owner
from execorder.backends.draws import generators_kept
from execorder.backends.memory import OPTIMIZERS
from execorder.backends.meta import REAL_LIMIT
from execorder.errors import (
    Arg,
    ForwardError,
    InstanceDeviceError,
    InstanceInitError,
    MetaDeviceError,
    ModeError,
    NeedsArgError,
    NeedsInputsError,
    SweepMemoryError,
    TargetError,
    TimingDeviceError,
    TraceFailure,
    user_code,
)
from execorder.loading import Inputs, build, check_device, resolve_target, split_target
from execorder.loading.frameworks import example_inputs, trainer_inputs
from execorder.loading.memory import capped, check_fits, fits, tensors_of
from execorder.loading.target import meta_copy
from execorder.report import InputSource, Mode, Report
from execorder.report.memory import Memory
from execorder.report.notes import Note, NoteKind

if TYPE_CHECKING:
    from execorder.analysis.sweep import SweepReport

Progress = Callable[[str], None]
"""Told what a slow step is about to do ("Tracing Net with torch.fx"), e.g. for a spinner."""


@dataclass(frozen=True, slots=True)
class Profile:
    """A report and how it was made.

    Attributes:
        report: What forward did.
        notes: The fallbacks taken to make it, in order.
        device: Where the model was when it was traced or run.
    """

    report: Report
    notes: tuple[Note, ...]
    device: str


class Profiler:
    """Profiles one model under any concrete arguments, with the auto and fallback policy.

    Auto mode runs forward eagerly on the inputs when there are any, and
    otherwise traces it with torch.fx.

    The model is built once; a fallback to CPU sticks for later runs, as a
    sweep wants.

    Args:
        model: An ``nn.Module``; an ``nn.Module`` subclass or a function
            returning one (built here, on meta by default); or a ``TARGET``
            text, ``"package.module:Attr"`` or ``"path/to/file.py:Attr"``.
        init_kwargs: Keyword arguments for the class or function.
        inputs: Real arguments of forward (a tensor, a tuple, a dict, or
            ``(tuple, dict)``), a function returning them (it may take a
            ``device`` keyword), or an :class:`~execorder.loading.Inputs`.
        input_size: Input sizes, as torchinfo takes them: a shape ``(2, 6)``,
            a text ``"int64[1,32]@0:32000"``, a list of either (positional),
            or a dict of them by argument name.
        mode: ``"auto"`` (eager when inputs are given, else FX), ``"fx"``
            or ``"eager"``.
        device: ``"meta"``, ``"cpu"`` or ``"cuda"`` to build on. None: meta,
            falling back to CPU when building or forward needs real values.
            A module given as it is stays where it is.
        backward: Run backward too (eager) and record the gradient order.
        assume: On the meta device, assume a selection made from values that
            depend on parameters (a router's ``nonzero``) keeps every
            element, and mark what rests on it; False treats it as needing
            real values, like ``.item()``: forward then runs again on CPU
            if the model fits, and is refused if not.
        seed: Seed the model's build, the generated inputs and the run with
            it, so a model routing on random values (or dropping layers at
            random) gives the same answer every run (the global random state
            is left as it was); None leaves them unseeded. The report states it.
        target: What to call the model in reports; by default the ``TARGET``
            text or the class name.
        progress: Told about each slow step, for a progress display.
        timing: Measure each module call's wall time (eager; on CPU unless
            ``device`` says cuda): the report's ``timing``.
        memory: Measure what a training step holds with this optimizer
            (``"adamw"``, ``"sgd"`` or ``"none"``; eager): the report's
            ``memory``. The step runs where the model is (on meta, without
            memory); a model built here is trained by it, one given is copied
            first unless on meta.
        memory_budget: Bytes the step must fit in: the memory's
            ``budget_bytes`` (``over_budget`` says whether the peak exceeds it);
            ``"device"``: the memory of the CUDA device the step runs on (none
            on CPU or meta), the command line's default.
        memory_foreach: Step the optimizer as torch does on CUDA, each update
            for all parameters at once (``foreach``); False: one parameter at
            a time, as on CPU.

    Raises:
        ModeError: If an argument does not fit the mode.
        NeedsArgError: For ``memory_budget`` without ``memory``.
        TargetError: If a target cannot be loaded or built.
        DeviceError: If the device is unknown or not available.
    """

    def __init__(
        self,
        model: nn.Module | str | Callable[..., nn.Module],
        *,
        init_kwargs: Mapping[str, Any] | None = None,
        inputs: Any = None,
        input_size: Any = None,
        mode: Mode | str = Mode.AUTO,
        device: str | None = None,
        backward: bool = False,
        assume: bool = True,
        seed: int | None = 0,
        target: str | None = None,
        progress: Progress | None = None,
        timing: bool = False,
        memory: str | None = None,
        memory_budget: int | Literal["device"] | None = None,
        memory_foreach: bool = True,
    ) -> None:
        chosen = Mode(mode)
        if isinstance(inputs, Inputs) and input_size is not None:
            raise TypeError("give the input sizes to the Inputs object, not as input_size")
        self.inputs = inputs if isinstance(inputs, Inputs) else Inputs(inputs, input_size)
        if chosen is Mode.FX and backward:
            raise ModeError(Arg.BACKWARD, chosen)
        if chosen is Mode.FX and memory:
            raise ModeError(Arg.MEMORY, chosen)
        if memory is not None and memory not in OPTIMIZERS:
            raise ValueError(f"memory must be one of {', '.join(OPTIMIZERS)}, not {memory!r}")
        if isinstance(memory_budget, str) and memory_budget != "device":
            raise ValueError(f"memory_budget must be bytes or 'device', not {memory_budget!r}")
        if memory_budget is not None and memory is None:
            raise NeedsArgError(Arg.MEMORY_BUDGET, Arg.MEMORY)
        self.memory, self.memory_budget = memory, memory_budget
        self.memory_foreach = memory_foreach
        if chosen is Mode.FX and self.inputs:
            raise ModeError(Arg.INPUTS, chosen)
        # Inputs given are inputs used: auto mode runs forward on them.
        self.mode = Mode.EAGER if backward or memory or self.inputs else chosen
        if timing and chosen is Mode.FX:
            raise ModeError(Arg.TIMING, chosen)
        if timing and device == "meta":
            raise TimingDeviceError()
        self.timing = timing
        if timing and device is None and not isinstance(model, nn.Module):
            device = "cpu"  # nothing runs on meta to be timed: a timed model is built on CPU
        self.chosen_mode = chosen
        self.backward = backward
        self.assume = assume
        self.seed = seed
        self._progress = progress or (lambda _: None)
        self._notes: list[Note] = []
        self._init = dict(init_kwargs or {})
        self._chosen_device = device
        self._what: str | None = None  # the constructor call, once built here
        check_device(device)

        name = None
        if isinstance(model, str):
            obj = resolve_target(model)
            name = split_target(model)[1]
            self.target = target or model
        else:
            obj = model
            self.target = target or str(getattr(obj, "__name__", type(obj).__name__))
        if isinstance(obj, nn.Module):
            if self._init:
                raise InstanceInitError(name or type(obj).__name__)
            where = _device_of(obj)
            if device is not None and device != where:
                raise InstanceDeviceError(name or type(obj).__name__, where, device)
            self._factory: Any = None
            self.model, self.device = obj, where
        else:
            self._factory, self._name = obj, name
            self._build(device)
        # A model given no inputs runs on its own example inputs, where it has them.
        self.inputs_made: dict[str, InputSource] = {}
        example = example_inputs(self.model) if not self.inputs and chosen is not Mode.FX else None
        if example is not None:
            self.inputs = Inputs(example, name="dummy_inputs")
            self.inputs_made = dict.fromkeys(example, InputSource.EXAMPLE)
            self.mode = Mode.EAGER
        if (self.mode is Mode.EAGER or timing) and not self.inputs:
            asked = {Arg.TIMING: timing, Arg.MEMORY: memory, Arg.BACKWARD: backward}
            needs = next((arg for arg, given in asked.items() if given), None)
            raise ModeError(None, Mode.EAGER, needs=needs)

    @property
    def notes(self) -> tuple[Note, ...]:
        """The fallbacks taken so far, in order."""
        return tuple(self._notes)

    def run(
        self, concrete_args: Mapping[str, Any] | None = None, *, seed: int | bool | None = True
    ) -> Profile:
        """Profile one forward under ``concrete_args``.

        Args:
            concrete_args: Fixed values for forward's arguments.
            seed: The seed of this run's generated inputs and forward, when it
                is not the model's (each rank of a job draws its own); True:
                the profiler's seed.

        Raises:
            ConcreteArgError: If a concrete argument is not an argument of forward.
            TraceFailure: If forward can be neither traced nor run;
                ``NeedsInputsError`` when FX failed in auto mode without inputs.
        """
        concrete = dict(concrete_args or {})
        run_seed = self.seed if seed is True else seed
        eager = self.mode is Mode.EAGER
        report = self._eager(concrete, run_seed) if eager else self._fx(concrete, run_seed)
        return Profile(dataclasses.replace(report, seed=run_seed), self.notes, self.device)

    def sweep(
        self,
        axes: Sequence[tuple[str, Sequence[Any]]],
        *,
        fixed: Mapping[str, Any] | None = None,
    ) -> SweepReport:
        """Profile every combination of the swept arguments; see :func:`~execorder.sweep`.

        Raises:
            SweepAxisError: If an argument is swept twice, or swept and fixed.
            SweepMemoryError: If the profiler measures memory (one run's step).
            SweepFailure: If a combination cannot be profiled, naming it.
        """
        from execorder.analysis.sweep import sweep  # the analyses, only for a sweep

        if self.memory is not None:
            raise SweepMemoryError()
        total = math.prod(len(values) for _, values in axes)
        count = iter(range(1, total + 1))

        def one(args: Mapping[str, Any]) -> Report:
            with self.combination(next(count), total):
                return self.run(args).report

        return sweep(one, axes=axes, fixed=fixed, target=self.target)

    @contextmanager
    def combination(self, number: int, total: int) -> Iterator[None]:
        """Within, each step told to ``progress`` says which combination of a sweep runs."""
        told = self._progress
        self._progress = lambda text: told(f"{text} (combination {number:,} of {total:,})")
        try:
            yield
        finally:
            self._progress = told

    def _fx(self, concrete: dict[str, Any], seed: int | None) -> Report:
        try:
            self._progress(f"Tracing {self.target} with torch.fx")
            # Seeded too: a draw from Python's random decides the traced branch.
            with self._kept(seed):
                return fx.trace(self.model, concrete_args=concrete, target=self.target)
        except TraceFailure as exc:
            if self.chosen_mode is Mode.FX:
                raise
            raise NeedsInputsError(exc) from exc

    def _eager(self, concrete: dict[str, Any], seed: int | bool | None) -> Report:
        where = self._inputs_device(self.device)
        try:
            # Seeded through forward too: a model that draws at random in forward
            # (dropout deciding nothing, LayerDrop deciding which layers run)
            # gives the same answer every run.
            with self._kept(seed):
                args, kwargs = self.inputs.make(where)
                args, kwargs, made = trainer_inputs(self.model, args, kwargs)
                self._progress(f"Running {self.target} on {self.device}")
                with self._capped("a forward"):
                    report = eager.trace(
                        self.model,
                        args=args,
                        kwargs={**kwargs, **concrete},
                        backward=self.backward,
                        target=self.target,
                        assume=self.assume,
                        timing=self.timing,
                    )
                made = {**self.inputs_made, **made}
                if made:
                    report = dataclasses.replace(report, inputs_made=made)
                if self.memory is not None:
                    with self._capped("a training step"):
                        measured = self._memory(where, concrete)
                    report = dataclasses.replace(report, memory=measured)
                return report
        except ForwardError as exc:
            if self._factory is None or self._chosen_device is not None or exc.device != "meta":
                raise
            what, extra = self._what or self.target, self.inputs.bytes()
            if isinstance(exc, MetaDeviceError):
                why = f"{exc.reason}, at {exc.where}" if exc.where else exc.reason
                check_fits(self.model, "cpu", what=what, why=why, extra=extra)
                self._notes.append(Note(NoteKind.RERAN_ON_CPU, why))
            elif fits(self.model, "cpu", extra=extra):
                # A meta kernel may refuse what CPU runs (a dtype only a GPU kernel
                # needs): try it where it is cheap; a real mistake fails there too.
                self._notes.append(Note(NoteKind.RETRIED_ON_CPU, exc.reason))
            else:
                raise
            self._build("cpu")
            return self._eager(concrete, seed)

    def _capped(self, running: str) -> AbstractContextManager[None]:
        """On CPU, what runs may grow only into the memory there is (:func:`capped`): what
        it holds besides the model is not measured before it runs."""
        if self.device != "cpu":
            return nullcontext()
        return capped(self._what or self.target, running=running)

    def _inputs_device(self, device: str) -> str:
        """Where a run on ``device`` makes its inputs: on meta they are real (on CPU), so
        that what they alone decide is computed; only inputs too big to be worth it stay on
        meta too."""
        return "cpu" if device == "meta" and self.inputs.bytes() <= REAL_LIMIT else device

    def step_arguments(self, where: str, concrete: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        """Forward's arguments for a run on ``where``: the inputs, made as a run makes them."""
        args, kwargs = self.inputs.make(self._inputs_device(where))
        args, kwargs, _ = trainer_inputs(self.model, args, kwargs)
        return args, {**kwargs, **concrete}

    def fresh_model(self, device: str = "cpu") -> nn.Module:
        """The model built anew, seeded as first, on ``device`` (for a run of its own); a
        model given as an instance is copied onto meta instead (:func:`meta_copy`).

        Raises:
            TargetError: For a model given as an instance, on another device than meta.
        """
        if self._factory is None:
            if device == "meta":
                return meta_copy(self.model)
            raise TargetError(
                f"{self.target} was given as a module: it can be copied onto meta, not built "
                f"anew on {device}; give its class, a function building it, or a TARGET"
            )
        with self._seeded():
            built = build(self._factory, init_kwargs=self._init, device=device, name=self._name)
        return built.model

    def _memory(self, where: str, concrete: Mapping[str, Any]) -> Memory:
        """Two training steps of the model, measured (see :mod:`execorder.backends.memory`)."""
        self._progress(f"Measuring a training step of {self.target} on {self.device}")
        args, kwargs = self.step_arguments(where, concrete)
        model = self.model
        if self._factory is None and self.device != "meta":
            model = copy.deepcopy(model)  # the caller's model: trained on a copy
        with user_code(f"running a training step of {owner(model)}"):
            measured = memory.measure(
                model,
                args=args,
                kwargs=kwargs,
                optimizer=self.memory or "adamw",
                foreach=self.memory_foreach,
                assume=self.assume,
            )
        return dataclasses.replace(measured, budget_bytes=self._budget())

    def _budget(self) -> int | None:
        """The step's budget in bytes, ``"device"`` read where the step runs."""
        if self.memory_budget != "device":
            return self.memory_budget
        if self.device != "cuda" or not torch.cuda.is_available():
            return None
        return int(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)

    def _build(self, device: str | None) -> None:
        if device in ("cpu", "cuda") and self._chosen_device == device:
            self._check_fits(device)  # asked for: measure it on meta first
        self._progress(f"Building {self.target} on {device or 'meta'}")
        with self._seeded():
            loaded = build(
                self._factory,
                init_kwargs=self._init,
                device=device,
                name=self._name,
                target=self.target,
            )
        if loaded.meta_failure is not None:
            self._notes.append(Note(NoteKind.BUILT_ON_CPU, loaded.meta_failure, loaded.what or ""))
        self.model, self.device = loaded.model, loaded.device or "cpu"
        self._what = loaded.what

    def _check_fits(self, device: str) -> None:
        """Build on meta (no memory) to measure it; refuse it if it cannot fit on ``device``."""
        with seeded_rng(self.seed or 0):
            try:
                measured = build(self._factory, init_kwargs=self._init, device="meta")
            except TargetError:
                return  # it cannot be built on meta: nothing to measure
        if measured.device == "meta":
            check_fits(measured.model, device, what=measured.what or self.target)

    def _seeded(self) -> Any:
        return nullcontext() if self.seed is None else seeded_rng(self.seed)

    @contextmanager
    def _kept(self, seed: int | bool | None) -> Iterator[None]:
        """A run seeded with ``seed`` (None: not at all); every generator it draws from, the
        model's own too, as it was after it."""
        with nullcontext() if seed is None else seeded_rng(int(seed)), generators_kept(self.model):
            yield


@contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Seed torch's generators, Python's ``random`` and, where it is imported, NumPy's global
    one for the block; their states are restored afterwards."""
    numpy_random = sys.modules.get("numpy.random")  # never imported here: a user's, if any
    python_state = random.getstate()
    numpy_state = numpy_random.get_state() if numpy_random is not None else None
    try:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            random.seed(seed)
            if numpy_random is not None:
                numpy_random.seed(seed)
            yield
    finally:
        random.setstate(python_state)
        if numpy_random is not None:
            numpy_random.set_state(numpy_state)


def _device_of(model: nn.Module) -> str:
    """Where a module's tensors are (its first parameter or buffer); CPU without any."""
    for tensor in tensors_of(model):
        return tensor.device.type
    return "cpu"


def profile(
    model: nn.Module | str | Callable[..., nn.Module],
    *,
    concrete_args: Mapping[str, Any] | None = None,
    **options: Any,
) -> Profile:
    """Profile a model's forward: execution order, parameter use, gradients.

    The library's front door, with the command line's policy: in ``auto``
    mode forward runs for real on the inputs given, or torch.fx traces it
    symbolically when there are none; a model built here starts on the meta
    device (no memory) and moves to CPU only when it must. Nothing is printed:
    what the policy did is in ``notes``.

    Example:
        >>> result = execorder.profile(Model, concrete_args={"run_all_layers": True})
        >>> [p.name for p in result.report.unused]
        ['weight_unused']
        >>> execorder.profile("pkg.models:Net", input_size="int64[1,32]").report.mode
        <Mode.EAGER: 'eager'>

    Args:
        model: A module, a class or function building one, or a ``TARGET``.
        concrete_args: Fixed values for forward's arguments (flags choosing
            a branch); in eager mode they are passed as keyword arguments.
        **options: The options of :class:`Profiler`: ``init_kwargs``,
            ``inputs``, ``input_size``, ``mode``, ``device``, ``backward``,
            ``assume``, ``seed``, ``target``, ``progress``, ``timing``.

    Returns:
        The report, the notes, and where the model ran.

    Raises:
        ModeError, TargetError, DeviceError: For arguments that cannot work.
        ConcreteArgError: If a concrete argument is not an argument of forward.
        TraceFailure: If forward can be neither traced nor run.
    """
    return Profiler(model, **options).run(concrete_args)
