"""The eager backend: run forward for real and record what runs.

For the duration of the run each module of the model gets a wrapper around
its ``_call_impl`` that logs the call, and each parameter is re-classed to a
private subclass of ``nn.Parameter`` whose ``__torch_function__`` logs the
op's parameters. torch only calls into Python for ops that actually receive
one of them (as an argument, keyword or inside a list), so ops on activations
cost nothing extra. The parameter objects stay the same, so identity, tying
and autograd are unaffected; wrappers and classes are removed afterwards,
also when forward raises. The hot path only appends to a list, which the
:class:`~execorder.recording.Recorder` replays afterwards: both backends feed
it, so an eager report has the same shape as an FX one (``mode`` is
``"eager"``). Liveness is settled when the block ends: from the backward that
ran inside it, else from the outputs' autograd graph.

:func:`record` arms all this around a block of the user's own (a training
step), and :meth:`Recording.report` builds the report afterwards;
:func:`trace` runs a forward (and a backward of the summed outputs) inside it."""

from __future__ import annotations

import dataclasses
import re
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any, NamedTuple

import torch
from torch import nn

from execorder.backends.checkpointing import is_reentrant, recompute
from execorder.backends.common import (
    DEEP,
    check_call,
    defaults_used,
    gc_paused,
    metadata_functions,
    owner,
    tensors,
)
from execorder.backends.meta import MetaRun, NeedsValues
from execorder.backends.timing import Clock
from execorder.errors import (
    ForwardError,
    MetaDeviceError,
    RecordingError,
    TooDeepError,
    UserExitError,
    first_line,
    user_code,
    user_frame,
    user_site,
)
from execorder.recording import (
    Assumed,
    Event,
    ModuleTree,
    Recorder,
    build_report,
    class_name,
    module_tree,
    unique_params,
    unwrap,
)
from execorder.report import Mode, Report

__all__ = ["DdpSettings", "MetaDeviceError", "Recording", "live_params", "record", "trace"]


@contextmanager
def _recording(
    root: nn.Module,
    tree: ModuleTree,
    events: list[Event],
    clock: Clock | None = None,
    swaps: _Swaps | None = None,
) -> Iterator[None]:
    """Log what runs inside ``root`` to ``events``, in the form :meth:`Recorder.replay` reads.

    A call of one of ``root``'s modules logs the module, then ``None`` when it
    returns (or raises). An op that receives some of ``root``'s parameters
    logs the list of them. The root's own call logs nothing: it is the
    recorder's first.

    Each module's ``_call_impl`` (what ``module(...)`` runs, hooks included) is
    wrapped on the instance: no global hooks, which would send every call
    through torch's slow path, and no patched class, which would invalidate
    Python's type caches. Each parameter is re-classed for the duration to a
    recording subclass of its own class (one per class: ``isinstance`` checks
    in forward still hold, and the class's own ``__torch_function__`` still
    decides every result), so torch calls back for ops that read it. A
    parameter that cannot be re-classed is watched by identity through a
    ``TorchFunctionMode`` instead, which sees every op, so it is slower.

    A parameter put into one of the model's slots while forward runs (FSDP2
    puts the unsharded parameter in place of the sharded one around each
    unit's forward) stands for the parameter the slot held at entry: it is
    re-classed too, and ``swaps`` learns which parameter it stands for.
    """
    append = events.append
    run_disabled = torch._C._disabled_torch_function_impl
    metadata = metadata_functions()
    user_class: dict[type, type] = {}  # a recording class -> the class it records
    handler: dict[type, Any] = {}  # a recording class -> its parent's __torch_function__

    def log(args: Any, kwargs: Any) -> None:
        used = []
        for value in (*args, *kwargs.values()) if kwargs else args:
            kind = type(value)
            if kind in user_class:
                used.append(value)
            elif kind is list or kind is tuple:
                used += [v for v in value if type(v) in user_class]
        append(used)

    def plain_function(
        cls: type, func: Callable[..., Any], types: Any, args: Any = (), kwargs: Any = None
    ) -> Any:
        """For nn.Parameter itself (and classes keeping its __torch_function__): the hot path."""
        if func not in metadata:  # w.dtype, w.shape, w.size(): not a use
            log(args, kwargs)
        # As nn.Parameter itself does: results are plain tensors.
        return run_disabled(func, types, args, kwargs or {})

    def chained_function(
        cls: type, func: Callable[..., Any], types: Any, args: Any = (), kwargs: Any = None
    ) -> Any:
        """For a class with a __torch_function__ of its own, which then decides as usual."""
        if func not in metadata:
            log(args, kwargs)
        types = tuple(user_class.get(t, t) for t in types)
        return handler[cls](func, types, args, kwargs or {})

    def recording_class(kind: type) -> type:
        own = getattr(kind, "__torch_function__", run_disabled)
        function = plain_function if own is run_disabled else chained_function
        made = type(
            kind.__name__,
            (kind,),
            {
                "__torch_function__": classmethod(function),
                "__slots__": (),  # the same layout as the class it records
                "__module__": kind.__module__,
                "__qualname__": kind.__qualname__,
            },
        )
        user_class[made] = kind
        handler[made] = own
        return made

    originals = {id(p): type(p) for p in tree.params}
    classes: dict[type, type] = {}
    watched: dict[int, nn.Parameter] = {}

    def wrap(module: nn.Module, call: Callable[..., Any]) -> Callable[..., Any]:
        def recorded(*args: Any, **kwargs: Any) -> Any:
            append(module)
            try:
                return call(*args, **kwargs)
            finally:
                append(None)

        return recorded

    def wrap_timed(module: nn.Module, call: Callable[..., Any]) -> Callable[..., Any]:
        # A wrapper of its own, so that untimed recording pays nothing for timing.
        enter, leave = clock.enter, clock.exit  # type: ignore[union-attr]

        def recorded(*args: Any, **kwargs: Any) -> Any:
            append(module)
            enter()
            try:
                return call(*args, **kwargs)
            finally:
                leave()
                append(None)

        return recorded

    wrapper = wrap if clock is None else wrap_timed

    def reclass(param: nn.Parameter) -> bool:
        """Re-class ``param`` for the run; False if its class cannot be changed."""
        kind = type(param)
        if kind not in classes:
            classes[kind] = recording_class(kind)
        try:
            param.__class__ = classes[kind]
        except TypeError:
            return False
        return True

    adopted: dict[int, tuple[nn.Parameter, type]] = {}  # swapped in: id -> (it, its class)

    def adopt(param: nn.Parameter, canonical: nn.Parameter) -> None:
        if swaps is None or id(param) in adopted or type(param) in user_class:
            return
        kind = type(param)
        if reclass(param):
            adopted[id(param)] = (param, kind)
            swaps.add(param, canonical)
        else:
            swaps.unseen.append(canonical)

    modules = [m for m in tree.modules if m is not root]
    slots = [_call_slot(m) for m in modules]
    saved = [m.__dict__.get(slot, _ABSENT) for m, slot in zip(modules, slots, strict=True)]
    owning = [m for m in tree.modules if m._parameters] if swaps is not None else []
    own_slots = [m.__dict__["_parameters"] for m in owning]
    try:
        for module, slot in zip(modules, slots, strict=True):
            module.__dict__[slot] = wrapper(module, getattr(module, slot))
        for param in tree.params:
            if not reclass(param):
                watched[id(param)] = param
        for module, held in zip(owning, own_slots, strict=True):
            module.__dict__["_parameters"] = _Slots(held, adopt)
        with _Watching(watched, metadata, append) if watched else nullcontext():
            yield
    finally:
        for module, held in zip(owning, own_slots, strict=True):
            _put_back(module, held)
        for module, slot, before in zip(modules, slots, saved, strict=True):
            _restore(module, slot, before)
        for param in tree.params:
            if type(param) is not originals[id(param)]:
                param.__class__ = originals[id(param)]
        for param, kind in adopted.values():
            param.__class__ = kind


class _Slots(dict[str, Any]):
    """A module's ``_parameters`` while recording: a parameter put in a slot is adopted.

    FSDP2 swaps parameters with ``module._parameters[name] = param`` (and
    ``setattr``, which comes here too); reads stay a plain dict's.
    """

    __slots__ = ("_adopt", "_held")

    def __init__(self, held: dict[str, Any], adopt: Callable[[Any, Any], None]) -> None:
        super().__init__(held)
        self._held = {name: p for name, p in held.items() if p is not None}
        self._adopt = adopt

    def __setitem__(self, name: str, value: Any) -> None:
        dict.__setitem__(self, name, value)
        canonical = self._held.get(name)
        if canonical is not None and value is not canonical and isinstance(value, nn.Parameter):
            self._adopt(value, canonical)


def _put_back(module: nn.Module, held: dict[str, Any]) -> None:
    """Give ``module`` its own ``_parameters`` dict again, holding what the slots hold now."""
    slots = module.__dict__.get("_parameters")
    if isinstance(slots, _Slots):
        same = held.keys() == slots.keys() and all(held[k] is v for k, v in slots.items())
        if not same:
            held.clear()
            held.update(slots)
        module.__dict__["_parameters"] = held


class _Swaps:
    """Parameters swapped into a model's slots during a recording, and what each stands for.

    Each swapped-in parameter gets the recording's gradient hook, so that a
    gradient accumulated into it (FSDP2 accumulates into the unsharded
    parameter) counts for the parameter it stands for.
    """

    def __init__(self, hooks: _GradHooks, on_grad: Callable[[nn.Parameter], None]) -> None:
        self.canonical: dict[int, nn.Parameter] = {}  # id(swapped in) -> what it stands for
        self.kept: list[nn.Parameter] = []  # the swapped-in ones, alive while their ids are used
        self.unseen: list[nn.Parameter] = []  # stood in for by one that could not be re-classed
        self._hooks, self._on_grad = hooks, on_grad

    def add(self, param: nn.Parameter, canonical: nn.Parameter) -> None:
        self.canonical[id(param)] = canonical
        self.kept.append(param)
        if param.requires_grad:
            on_grad = self._on_grad

            def stands_for(_: Any) -> None:
                on_grad(canonical)

            self._hooks.add([param], stands_for)

    def resolve(self, events: list[Event]) -> list[Event]:
        """The event log with each swapped-in parameter replaced by the one it stands for."""
        if not self.canonical:
            return events
        get = self.canonical.get
        return [
            [get(id(p), p) for p in event] if isinstance(event, list) else event for event in events
        ]


class _Watching(torch.overrides.TorchFunctionMode):
    """Logs the ops that read parameters that could not be re-classed, by identity."""

    def __init__(
        self, watched: dict[int, nn.Parameter], metadata: frozenset[object], append: Any
    ) -> None:
        super().__init__()
        self.watched, self.metadata, self.append = watched, metadata, append

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: Any = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        if func not in self.metadata:
            used: list[Any] = []
            for value in (*args, *kwargs.values()):
                if self.watched.get(id(value)) is value:
                    used.append(value)
                elif type(value) is list or type(value) is tuple:
                    used += [v for v in value if self.watched.get(id(v)) is v]
            if used:
                self.append(used)
        return func(*args, **kwargs)


_ABSENT = object()


def _call_slot(module: nn.Module) -> str:
    """What ``module(...)`` runs (via ``_wrapped_call_impl``): the compiled call if any."""
    compiled = getattr(module, "_compiled_call_impl", None) is not None
    return "_compiled_call_impl" if compiled else "_call_impl"


def _restore(module: nn.Module, slot: str, before: Any) -> None:
    """Put back what ``module.__dict__`` held at ``slot`` (``_ABSENT``: nothing)."""
    if before is _ABSENT:
        module.__dict__.pop(slot, None)
    else:
        module.__dict__[slot] = before


def live_params(
    outputs: Any,
    params: Sequence[nn.Parameter],
    stand_ins: Mapping[int, nn.Parameter] | None = None,
) -> set[nn.Parameter]:
    """Those of ``params`` whose gradient accumulators the outputs' autograd graph reaches.

    The graph is walked, not run; a reentrant checkpoint's block, which only
    backward would record, is run again to walk its graph too, from the
    outputs the walk reaches (:mod:`execorder.backends.checkpointing`).
    ``stand_ins`` maps the ids of parameters swapped in during forward to
    those of ``params`` they stand for.
    """
    own = {id(p): p for p in params} | dict(stand_ins or {})
    live: set[nn.Parameter] = set()
    seen: set[Any] = set()
    stack: list[tuple[Any, int]] = []  # (autograd node, which of its outputs)
    for tensor in tensors(outputs):
        if tensor.grad_fn is not None:
            stack.append((tensor.grad_fn, tensor.output_nr))
        elif id(tensor) in own and tensor.requires_grad:
            live.add(own[id(tensor)])  # a parameter returned as it is
    reached: dict[Any, set[int]] = {}  # a reentrant checkpoint's node -> outputs reached
    expanded: dict[Any, set[int]] = {}
    recomputed: dict[Any, tuple[Any, ...]] = {}
    # A recomputed block's detached input, by id -> the edge into the forward graph.
    inputs: dict[int, tuple[Any, int] | None] = {}
    keep: list[Any] = []  # the recomputed tensors, alive while their ids are used
    while stack:
        while stack:
            fn, number = stack.pop()
            if is_reentrant(fn):
                reached.setdefault(fn, set()).add(number)
                continue
            if fn in seen:
                continue
            seen.add(fn)
            variable = getattr(fn, "variable", None)
            if variable is not None and id(variable) in own:
                live.add(own[id(variable)])
            elif variable is not None and id(variable) in inputs:
                edge = inputs[id(variable)]
                if edge is not None:
                    stack.append(edge)
            stack.extend((next_fn, nr) for next_fn, nr in fn.next_functions if next_fn is not None)
        for fn, numbers in reached.items():
            new = numbers - expanded.setdefault(fn, set())
            if not new:
                continue
            expanded[fn] |= new
            if fn not in recomputed:
                block_outputs, detached = recompute(fn)
                recomputed[fn] = block_outputs
                keep += [*block_outputs, *detached]
                edges = [e if e[0] is not None else None for e in fn.next_functions]
                for k, index in enumerate(fn.tensor_indices):
                    inputs[id(detached[index])] = edges[k] if k < len(edges) else None
            for number in new:
                out = recomputed[fn][number]
                if not isinstance(out, torch.Tensor):
                    continue
                if out.grad_fn is not None:
                    stack.append((out.grad_fn, out.output_nr))
                elif id(out) in own:
                    live.add(own[id(out)])  # the block returns a parameter as it is
                elif (edge := inputs.get(id(out))) is not None:
                    stack.append(edge)  # the block returns an input as it is
    return live


class _GradHooks:
    """Post-accumulate-grad hooks, written straight into each tensor's hook dict.

    As ``Tensor.register_post_accumulate_grad_hook`` does, without its handle
    objects: about 9x cheaper, and on a GPU this runs while the device waits.
    :meth:`remove` takes them out the way a handle does: the key leaves the dict.
    """

    def __init__(self) -> None:
        self._key = object()
        self._dicts: list[dict[Any, Any]] = []

    def add(self, params: Sequence[nn.Parameter], hook: Callable[[Any], None]) -> None:
        key = self._key
        with _own_reads():
            for param in params:
                hooks = param._post_accumulate_grad_hooks
                if hooks is None:
                    param._post_accumulate_grad_hooks = hooks = OrderedDict()
                hooks[key] = hook
                self._dicts.append(hooks)

    def remove(self) -> None:
        for hooks in self._dicts:
            hooks.pop(self._key, None)
        self._dicts.clear()


_META = re.compile(r"(?<![a-z])meta(?![a-z])", re.IGNORECASE)  # register_meta, Meta, meta!


def needs_values(exc: BaseException) -> bool:
    """Whether an exception from a forward on the meta device means it needs real values.

    torch's meta-device failures all say so: ``Tensor.item() cannot be called
    on meta tensors``, ``The register_meta function for torch.nonzero()``,
    ``Cannot copy out of meta tensor``, ``attempted to run this operator with
    Meta tensors``, ``not on the expected device meta`` (each one is tested).
    Anything else (a wrong dtype, mismatched shapes, a bug) fails on CPU too.
    """
    while exc is not None:
        if isinstance(exc, NeedsValues):
            return True
        if isinstance(exc, (RuntimeError, NotImplementedError)) and _META.search(str(exc)):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


@contextmanager
def _frames_for(tree: ModuleTree) -> Iterator[None]:
    """Room for the one frame the recording adds to each module call.

    A model that torch itself can run (within Python's recursion limit) is
    recorded too, however deeply it nests; the frames are Python's own, not C's.
    """
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(limit + tree.depth + 50)
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)


def _own_reads() -> Any:
    """execorder's own reads of parameters: no parameter class's ``__torch_function__`` runs."""
    return torch._C.DisableTorchFunctionSubclass()


def _on_meta(
    tree: ModuleTree, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None
) -> bool:
    """Whether any parameter, buffer or input is on meta (walked without recursion)."""
    buffers = [b for m in tree.modules for b in m._buffers.values() if b is not None]
    with _own_reads():
        return any(t.is_meta for t in (*tree.params, *buffers, *tensors((args, kwargs or {}))))


class Recording:
    """One forward of a model, and the backward that followed, as :func:`record` saw them.

    Cheap to hold: live module and parameter objects and a flat event log,
    named and frozen into a report only by :meth:`report`.
    """

    def __init__(
        self, model: nn.Module, tree: ModuleTree, *, assume: bool = True, timing: bool = False
    ) -> None:
        self.model = model
        self._tree = tree
        self._assume = assume
        self._clock = _clock_for(model, tree) if timing else None
        self._running = False
        self._meta_run: MetaRun | None = None
        self._forward_assumed = False  # an assumption made while forward ran
        self._backward_assumed = False  # ... and one made after it (by backward)
        self._events: list[Event] = []
        self._order: list[nn.Parameter] = []  # gradient accumulations, by hook
        self._calls = 0
        self._failed = False
        self._ended = False
        self._with_grad = True
        self._outputs: Any = None
        self._returned: list[nn.Parameter] = []
        self._live: set[nn.Parameter] | None = None
        self._inputs: dict[str, str] = {}
        self._trainable: list[nn.Parameter] = []
        self._concrete_args: dict[str, Any] = {}
        self._defaults: dict[str, Any] = {}
        self._hooks = _GradHooks()
        self._swaps = _Swaps(self._hooks, self._order.append)
        self._method: str | None = None
        self.ddp: DdpSettings | None = None
        """DDP's settings, when the recorded call ran inside a ``DistributedDataParallel``."""

    def _call(self, call: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The model's own call, with its modules and parameters recorded."""
        if self._calls:
            raise RecordingError(
                f"{class_name(self.model)} was called a second time inside a record() "
                "block; a recording covers one forward (and its backward)"
            )
        self._calls += 1
        self._with_grad = torch.is_grad_enabled()
        self._inputs = _describe(args, kwargs)
        self._concrete_args = {k: v for k, v in kwargs.items() if not isinstance(v, torch.Tensor)}
        self._defaults = defaults_used(
            self.model, args, kwargs, function=call if self._method else None
        )
        self.ddp = _ddp_around(self.model)
        if self._meta_run is not None:
            if any(t.is_meta for t in tensors((args, kwargs))):
                self._meta_run.source = "parameters and meta inputs"
            # On meta like the model, and their values known: see MetaRun.adopt.
            args, kwargs = self._meta_run.adopt((args, kwargs))
        try:
            self._running = True
            clock = self._clock
            with _recording(self.model, self._tree, self._events, clock, self._swaps):
                if clock is None:
                    self._outputs = call(*args, **kwargs)
                else:
                    clock.enter()
                    try:
                        self._outputs = call(*args, **kwargs)
                    finally:
                        clock.exit()
        except BaseException:
            self._failed = True
            raise
        finally:
            self._running = False
        return self._outputs

    def _assumed(self, op: str) -> None:
        """A meta run assumed a selection: logged in forward, noted once after it."""
        if self._running:
            self._events.append(Assumed(op, user_site()))
            self._forward_assumed = True
        elif self._calls:
            self._backward_assumed = True

    def _finish(self) -> None:
        """The block has ended: take what needs the outputs, then let them go."""
        outputs, self._outputs = self._outputs, None
        self._ended = True
        if not self._calls or self._failed:
            return
        own = {id(p): p for p in self._tree.params} | self._swaps.canonical
        self._returned = [own[id(t)] for t in tensors(outputs) if id(t) in own]
        if self._backward_assumed and not self._forward_assumed:
            # Only backward selected from unknown values: everything may rest on it.
            self._events.append(Assumed("backward"))
        if self._order:
            # A backward ran: the parameters that got a gradient are the live
            # ones. Several backwards: each parameter at its first accumulation.
            self._order = list(unique_params(self._order))
            self._live = set(self._order)
        elif self._with_grad:
            self._live = live_params(outputs, self._tree.params, self._swaps.canonical)
        # else: a forward under no_grad has no graph, so no liveness to tell.

    def report(
        self, *, target: str | None = None, inputs: Mapping[str, str] | None = None
    ) -> Report:
        """Name and freeze what was recorded.

        Args:
            target: What to call the model; its class name by default.
            inputs: Descriptions of the input tensors; by default
                ``dtype[shape]`` of each tensor argument of the recorded call.

        Raises:
            RecordingError: If the block has not ended, the model was not
                called inside it, or its forward raised.
        """
        name = class_name(self.model)
        if not self._calls:
            how = (
                f"call model.{self._method}(...)"
                if self._method
                else "call the model itself, model(...), not model.forward(...)"
            )
            raise RecordingError(f"{name} was not called inside the record() block ({how})")
        if self._failed:
            raise RecordingError(f"{name}.forward raised inside the record() block")
        if not self._ended:
            raise RecordingError("report() is available once the record() block has ended")
        if self._swaps.unseen:
            names = sorted({self._tree.param_names[id(p)][0] for p in self._swaps.unseen})
            raise RecordingError(
                f"{name}: the parameters put in place of {', '.join(names)} while forward ran "
                "could not be recorded (their class cannot be changed)"
            )
        with gc_paused():
            recorder = Recorder(self.model, self._tree)
            recorder.replay(self._swaps.resolve(self._events))
            # A parameter returned as it is counts as used by the root.
            recorder.use(self._returned)
            report = build_report(
                recorder,
                target=target or name,
                mode=Mode.EAGER,
                concrete_args=self._concrete_args,
                defaults=self._defaults,
                live=self._live,
                backward=self._order or None,
                inputs=self._inputs if inputs is None else inputs,
                trainable=self._trainable,
            )
        if self._clock is None:
            return report
        timing = self._clock.timing([call.parent for call in report.modules])
        if len(timing.calls) != len(report.modules):
            raise RecordingError(
                f"timed {len(timing.calls)} calls but recorded {len(report.modules)}: "
                "calls made outside forward (activation checkpointing's recomputation) "
                "cannot be timed"
            )
        return dataclasses.replace(report, timing=timing)


def _clock_for(model: nn.Module, tree: ModuleTree) -> Clock:
    """A clock for where the model's parameters are; nothing runs on meta to time."""
    kinds = {p.device.type for p in tree.params} or {"cpu"}
    if "meta" in kinds:
        raise RecordingError(
            f"{class_name(model)} is on the meta device, where nothing runs to be timed: "
            "time it on cpu or cuda"
        )
    return Clock("cuda" if "cuda" in kinds else "cpu")


@contextmanager
def record(
    model: nn.Module,
    *,
    method: str | None = None,
    assume: bool = True,
    timing: bool = False,
) -> Iterator[Recording]:
    """Record the forward of ``model`` run inside the block, and its backward.

    For profiling a real training step: the block runs the model the way the
    training loop does (its own inputs, loss, autocast, ...), and the report
    is built afterwards, so the step itself pays only for the recording.

    Example:
        >>> with execorder.eager.record(model) as recording:
        ...     loss = model(**batch).loss
        ...     loss.backward()
        >>> report = recording.report()

    The first call of ``model`` inside the block is recorded; a second one is
    an error. When a backward runs inside the block, the report has the order
    in which gradients were first accumulated, and the used parameters that
    got none are dead; otherwise liveness comes from the autograd graph of the
    outputs (none under ``no_grad``: then nothing is marked dead). Wrappers,
    parameter classes and hooks are removed when the block ends, also when it
    raises.

    Inside a job the report is the plain model's, under its own names:
    ``model`` may be wrapped in ``DistributedDataParallel``, ``torch.compile``
    or ``checkpoint_wrapper`` (or be the model inside them, called through
    them), sharded with FSDP2's ``fully_shard`` (the unsharded parameters
    forward reads count for the model's own), or have tensor-parallel
    (DTensor) parameters. Anything ``torch.compile`` compiled runs eagerly
    inside the block (``torch.compiler.set_stance("force_eager")``): nothing
    is compiled or recompiled for it, and the steps after it run the graphs
    compiled before. FSDP1 (``FullyShardedDataParallel``), which flattens
    parameters, is refused.

    A model on the meta device runs with real inputs: values computed from
    the inputs alone are real (:mod:`execorder.backends.meta`). A selection
    from values computed from parameters (a router's ``nonzero``) is assumed
    to keep every element, and the report says what rests on it; with
    ``assume=False`` it is a value read instead, which raises.

    With ``timing=True`` each module call's wall time is measured too
    (``perf_counter`` on CPU; CUDA events on a GPU, read once after the
    block) and the report has it as ``timing``.

    Args:
        model: The model, or a wrapper of it (DDP, ``torch.compile``, ...).
        method: The method that runs the step, when the training loop calls
            one instead of the model itself (Lightning's ``"training_step"``);
            the root call is then that method's.
        assume: See above: on meta, assume a selection keeps every element.
        timing: Measure each module call's wall time.

    Raises:
        RecordingError: If ``model`` has lazy modules that have not run yet
            (their parameters do not exist), is on meta with ``timing``, is
            sharded with FSDP1, or is compiled on a torch without
            ``torch.compiler.set_stance`` (before 2.6).
    """
    root = unwrap(model)
    tree = module_tree(root)
    _check_recordable(model, root, tree)
    recording = Recording(root, tree, assume=assume, timing=timing)
    recording._method = method
    with _recorded(recording):
        yield recording


def _check_recordable(model: nn.Module, root: nn.Module, tree: ModuleTree) -> None:
    """Refuse what a recording cannot see as the plain model (see :func:`record`)."""
    name = class_name(root)
    if tree.has_lazy_params:
        raise RecordingError(
            f"{name} has lazy modules that have not run yet; run one "
            "forward before recording (eager.trace does that itself)"
        )
    fsdp1 = getattr(
        sys.modules.get("torch.distributed.fsdp.fully_sharded_data_parallel"),
        "FullyShardedDataParallel",
        None,
    )
    if fsdp1 is not None and any(isinstance(m, fsdp1) for m in (model, *tree.modules)):
        inner = root.module if isinstance(root, fsdp1) else root
        raise RecordingError(
            f"{class_name(inner)} is sharded with FSDP1 (FullyShardedDataParallel), which "
            "flattens its parameters into one; record it under FSDP2 (fully_shard), or "
            "before wrapping"
        )
    parallel = getattr(sys.modules.get("torch.nn.parallel.data_parallel"), "DataParallel", None)
    if parallel is not None and isinstance(model, parallel) and len(model.device_ids) > 1:
        raise RecordingError(
            f"DataParallel runs copies of {name} on {len(model.device_ids)} GPUs, which the "
            "recording does not see; record the model itself, or under DDP"
        )
    if getattr(torch.compiler, "set_stance", None) is None and _compiled(model):
        raise RecordingError(
            f"{name} is compiled (torch.compile), and this torch cannot run it eagerly for "
            "the recording (torch.compiler.set_stance needs torch 2.6 or newer); "
            "record the model uncompiled"
        )


def _compiled(model: nn.Module) -> bool:
    """Whether any module of ``model`` runs compiled code (``torch.compile``, ``.compile()``)."""
    optimized = getattr(sys.modules.get("torch._dynamo.eval_frame"), "OptimizedModule", None)
    return any(
        getattr(m, "_compiled_call_impl", None) is not None
        or (optimized is not None and isinstance(m, optimized))
        for m in model.modules()
    )


def _uncompiled() -> Any:
    """Compiled code runs eagerly inside, and nothing compiles: the hooks run as written.

    ``force_eager`` leaves dynamo's caches as they are, so the steps after
    the recording run the graphs compiled before it. Nothing to do while
    dynamo has not been imported: then nothing is compiled.
    """
    set_stance = getattr(torch.compiler, "set_stance", None)
    if "torch._dynamo" not in sys.modules or set_stance is None:
        return nullcontext()
    return set_stance("force_eager")


class DdpSettings(NamedTuple):
    """What decides how ``DistributedDataParallel`` takes a parameter that gets no gradient.

    With ``find_unused_parameters=False`` and no ``static_graph``, a trainable
    parameter that gets no gradient fails the next step ("Expected to have
    finished reduction in the prior iteration ...").
    """

    find_unused_parameters: bool
    static_graph: bool

    @property
    def fails_without_gradient(self) -> bool:
        """Whether a trainable parameter without a gradient fails the next step."""
        return not self.find_unused_parameters and not self.static_graph


def _ddp_around(model: nn.Module) -> DdpSettings | None:
    """The settings of the DDP whose forward runs ``model`` now, if any (read off the stack)."""
    ddp = getattr(sys.modules.get("torch.nn.parallel.distributed"), "DistributedDataParallel", None)
    if ddp is None:
        return None
    codes = {f.__code__ for f in (ddp.forward, ddp._run_ddp_forward) if hasattr(f, "__code__")}
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code in codes:
            wrapper = frame.f_locals.get("self")
            if isinstance(wrapper, ddp) and unwrap(wrapper) is model:
                return DdpSettings(
                    bool(wrapper.find_unused_parameters),
                    bool(getattr(wrapper, "static_graph", False)),
                )
        frame = frame.f_back  # type: ignore[assignment]
    return None


@contextmanager
def _recorded(recording: Recording) -> Iterator[None]:
    """Arm ``recording``: wrap its model's call (or method), hook its parameters' gradients."""
    model, tree = recording.model, recording._tree
    slot = recording._method or _call_slot(model)
    before = model.__dict__.get(slot, _ABSENT)
    if getattr(before, "_execorder_recording", False):
        raise RecordingError(f"{class_name(model)} is already being recorded (nested record())")
    call = getattr(model, slot)
    if not callable(call):
        raise RecordingError(f"{class_name(model)}.{slot} is not a method")

    def recorded(*args: Any, **kwargs: Any) -> Any:
        return recording._call(call, args, kwargs)

    recorded._execorder_recording = True  # type: ignore[attr-defined]

    with _own_reads():
        trainable = [p for p in tree.params if p.requires_grad]
    recording._trainable = trainable  # before forward, which may switch some off
    on_meta = MetaRun(recording._assumed, assume=recording._assume) if _on_meta(tree) else None
    recording._meta_run = on_meta
    with gc_paused(), _uncompiled(), on_meta or nullcontext():
        recording._hooks.add(trainable, recording._order.append)
        model.__dict__[slot] = recorded
        try:
            yield
        finally:
            _restore(model, slot, before)
            recording._hooks.remove()
            recording._finish()


def trace(
    model: nn.Module,
    *,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    backward: bool = False,
    target: str | None = None,
    inputs: Mapping[str, str] | None = None,
    assume: bool = True,
    timing: bool = False,
) -> Report:
    """Run ``model(*args, **kwargs)`` for real and report its execution order.

    Pure: nothing is printed. With the model on the meta device, only what
    the inputs alone decide is computed (see :func:`record` for the policy
    on values computed from parameters). To record a training step of your
    own instead, see :func:`record`.

    Args:
        model: The module to run.
        args: Positional arguments of forward.
        kwargs: Keyword arguments of forward (inputs and concrete values).
        backward: Also run backward on the sum of the outputs and record the
            order in which parameters' gradients are accumulated.
        target: What to call the model in the report; its class name by default.
        inputs: Descriptions of the input tensors for the report; by default
            those of the tensor arguments.
        assume: On meta, assume a selection from values computed from
            parameters keeps every element (and say so in the report);
            False makes it a value read, which raises ``MetaDeviceError``.
        timing: Measure each module call's wall time (CPU or CUDA; not on
            meta) into the report's ``timing``.

    Returns:
        The report, with ``mode`` ``"eager"``.

    Raises:
        ConcreteArgError: If a keyword is not an argument of forward.
        CallError: If forward cannot take these arguments (checked before it runs).
        MetaDeviceError: If forward needs real values and the model or the
            inputs are on the meta device.
        ForwardError: If forward raises otherwise.
    """
    kwargs = dict(kwargs or {})
    check_call(model, tuple(args), kwargs)
    with gc_paused():
        tree = module_tree(model)
        if tree.has_lazy_params:
            # Lazy modules (nn.LazyLinear, ...) create their parameters in
            # their first forward: run it once unrecorded, then record one.
            try:
                with (
                    torch.no_grad(),
                    user_code(f"running {owner(model)}"),
                    MetaRun(assume=assume) if _on_meta(tree) else nullcontext() as run,
                ):
                    first_args, first_kwargs = run.adopt((args, kwargs)) if run else (args, kwargs)
                    model(*first_args, **first_kwargs)
            except UserExitError:
                raise
            except Exception as exc:
                raise ForwardError(
                    owner(model),
                    f"initializing its lazy modules: {first_line(exc)}",
                    where=user_frame(exc),
                ) from exc
            tree = module_tree(model)
        recording = Recording(model, tree, assume=assume, timing=timing)
        with _recorded(recording):
            try:
                with (
                    torch.enable_grad(),
                    user_code(f"running {owner(model)}"),
                    _frames_for(tree),
                ):
                    outputs = model(*args, **kwargs)
            except UserExitError:
                raise
            except RecursionError as exc:
                if tree.depth < DEEP:
                    raise ForwardError(
                        owner(model), first_line(exc), where=user_frame(exc)
                    ) from exc
                limit = sys.getrecursionlimit()
                raise TooDeepError(owner(model), tree.depth, limit, running=True) from exc
            except Exception as exc:
                raise _failure(model, tree, args, kwargs, exc) from exc
            if backward:
                try:
                    with user_code(f"running the backward of {owner(model)}"):
                        _sum_backward(outputs)
                except UserExitError:
                    raise
                except Exception as exc:
                    raise _failure(model, tree, args, kwargs, exc, "in backward: ") from exc
            del outputs
        return recording.report(target=target, inputs=inputs)


def _failure(
    model: nn.Module,
    tree: ModuleTree,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    exc: Exception,
    prefix: str = "",
) -> ForwardError:
    """The error for a forward (or its backward) that raised ``exc``."""
    on_meta = _on_meta(tree, args, kwargs)
    if on_meta and needs_values(exc):
        return MetaDeviceError(owner(model), prefix + _values_reason(exc), where=user_frame(exc))
    return ForwardError(
        owner(model),
        prefix + first_line(exc),
        where=user_frame(exc),
        device="meta" if on_meta else "",
        inputs=[f"{k}={v}" for k, v in _describe(args, kwargs).items()],
    )


def _values_reason(exc: BaseException) -> str:
    """What needed values: the op a meta run names, else the error's first line."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, NeedsValues):
            return str(cause)
        cause = cause.__cause__ or cause.__context__
    return first_line(exc)


def _sum_backward(outputs: Any) -> None:
    """Backward from the sum of every output that requires grad."""
    losses = [t.float().sum() for t in tensors(outputs) if t.requires_grad]
    if losses:
        loss = losses[0] if len(losses) == 1 else torch.stack(losses).sum()
        loss.backward()


def describe(tensor: torch.Tensor) -> str:
    """``dtype[shape]`` of a tensor, as an input size is written."""
    return f"{str(tensor.dtype).removeprefix('torch.')}[{', '.join(str(d) for d in tensor.shape)}]"


def _describe(args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, str]:
    described = {f"arg{i}": describe(a) for i, a in enumerate(args) if isinstance(a, torch.Tensor)}
    described |= {k: describe(v) for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
    return described
