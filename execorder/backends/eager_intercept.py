"""Interception for an eager run: each module call and each op on a parameter, logged.

Each module of the model gets a wrapper around its ``_call_impl`` that logs
the call, and each parameter is re-classed to a private subclass of
``nn.Parameter`` whose ``__torch_function__`` logs the op's parameters; a
parameter put into a module's slot while forward runs (FSDP2's unsharded
ones) stands for the one it replaces. Everything is put back afterwards,
also when forward raises."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

from execorder.backends import arguments
from execorder.backends.checkpointing import blocks_logged, own_blocks_logged
from execorder.backends.common import metadata_functions
from execorder.backends.eager_liveness import GradHooks
from execorder.backends.timing import Clock
from execorder.errors import user_site
from execorder.recording import Checkpointed, Event, InputWrite, ModuleTree, UnseenBackward


@contextmanager
def intercepting(
    root: nn.Module,
    tree: ModuleTree,
    events: list[Event],
    clock: Clock | None = None,
    swaps: Swaps | None = None,
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
    passed_in, written = arguments.held, arguments.written  # bound once: each call uses them
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
            passed = passed_in(args, kwargs, _needs_grad)
            try:
                return call(*args, **kwargs)
            finally:
                if passed and written(passed):
                    append(WRITE)
                append(None)

        return recorded

    def wrap_timed(module: nn.Module, call: Callable[..., Any]) -> Callable[..., Any]:
        # A wrapper of its own, so that untimed recording pays nothing for timing.
        enter, leave = clock.enter, clock.exit  # type: ignore[union-attr]

        def recorded(*args: Any, **kwargs: Any) -> Any:
            append(module)
            passed = passed_in(args, kwargs, _needs_grad)
            enter()
            try:
                return call(*args, **kwargs)
            finally:
                leave()
                if passed and written(passed):
                    append(WRITE)
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
    slots = [call_slot(m) for m in modules]
    saved = [m.__dict__.get(slot, ABSENT) for m, slot in zip(modules, slots, strict=True)]
    # A TorchScript module's _parameters is a view of its C++ module's: left as it is.
    owning = (
        [m for m in tree.modules if m._parameters and not isinstance(m, torch.jit.ScriptModule)]
        if swaps is not None
        else []
    )
    own_slots = [m.__dict__["_parameters"] for m in owning]
    try:
        for module, slot in zip(modules, slots, strict=True):
            module.__dict__[slot] = wrapper(module, getattr(module, slot))
        for param in tree.params:
            if not reclass(param):
                watched[id(param)] = param
        for module, held in zip(owning, own_slots, strict=True):
            module.__dict__["_parameters"] = _Slots(held, adopt)
        with (
            _Watching(watched, metadata, append) if watched else nullcontext(),
            _control_flow_refused(),
            blocks_logged(lambda start, needs: append(Checkpointed(start, "", needs))),
            own_blocks_logged(
                lambda: len(events),
                lambda at, cls: _bracket(events, at, cls.__name__),
                lambda at, cls, args: _unseen_backward(events, at, cls, args),
            ),
        ):
            yield
    finally:
        for module, held in zip(owning, own_slots, strict=True):
            _put_back(module, held)
        for module, slot, before in zip(modules, slots, saved, strict=True):
            restore(module, slot, before)
        for param in tree.params:
            if type(param) is not originals[id(param)]:
                param.__class__ = originals[id(param)]
        for param, kind in adopted.values():
            param.__class__ = kind


class UnrecordableError(RuntimeError):
    """Forward called an op whose work the recording cannot see."""


_CONTROL_FLOW = ("cond", "while_loop")  # torch's control-flow operators (higher-order ops)


@contextmanager
def _control_flow_refused() -> Iterator[None]:
    """``torch.cond`` and ``torch.while_loop`` raise :class:`UnrecordableError` for the duration.

    In eager mode torch runs them through torch.compile, out of the recording's sight:
    the output comes back without the history a real run gives it (``torch.cond``'s
    backward gives every lifted parameter of both branches a gradient), so every parameter
    would be called dead. Refused, rather than answered wrong.
    """
    import torch._higher_order_ops as ops

    places = [
        (owner, name)
        for name in _CONTROL_FLOW
        for owner in (torch, ops, sys.modules.get(f"torch._higher_order_ops.{name}"))
        if owner is not None and hasattr(owner, name)
    ]
    saved = [(owner, name, getattr(owner, name)) for owner, name in places]

    def refuse(name: str) -> Callable[..., Any]:
        def refused(*args: Any, **kwargs: Any) -> Any:
            raise UnrecordableError(
                f"torch.{name} runs its body through torch.compile, out of execorder's "
                "sight: the recording cannot tell which parameters get a gradient"
            )

        return refused

    for owner, name, _ in saved:
        setattr(owner, name, refuse(name))
    try:
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


WRITE = InputWrite()


def _needs_grad(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.requires_grad


def _bracket(events: list[Event], at: int, by: str) -> None:
    """Mark the events from ``at`` on as the block of checkpoint Function ``by``, once it is
    known to be one."""
    events.insert(at, Checkpointed(True))
    events.append(Checkpointed(False, by))


def _unseen_backward(events: list[Event], at: int, cls: type, args: tuple[Any, ...]) -> None:
    """Log the parameters a custom Function's forward read (the events from ``at`` on)
    that it was not passed: its backward, unseen, decides their gradient."""
    passed = {id(a) for a in args if isinstance(a, torch.Tensor)}
    read = {id(p): p for event in events[at:] if isinstance(event, list) for p in event}
    hidden = tuple(p for key, p in read.items() if key not in passed)
    if hidden:
        events.append(UnseenBackward(cls.__name__, hidden, user_site()))


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


class Swaps:
    """Parameters swapped into a model's slots during a recording, and what each stands for.

    Each swapped-in parameter gets the recording's gradient hook, so that a
    gradient accumulated into it (FSDP2 accumulates into the unsharded
    parameter) counts for the parameter it stands for.
    """

    def __init__(self, hooks: GradHooks, on_grad: Callable[[nn.Parameter], None]) -> None:
        self.canonical: dict[int, nn.Parameter] = {}  # id(swapped in) -> what it stands for
        self.kept: list[nn.Parameter] = []  # the swapped-in ones, alive while their ids are used
        self.unseen: list[nn.Parameter] = []  # stood in for by one that could not be re-classed
        self.on_add: Callable[[nn.Parameter], None] | None = None  # told of each swapped in
        self._hooks, self._on_grad = hooks, on_grad

    def add(self, param: nn.Parameter, canonical: nn.Parameter) -> None:
        self.canonical[id(param)] = canonical
        self.kept.append(param)
        if self.on_add is not None:
            self.on_add(param)
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


ABSENT = object()


def call_slot(module: nn.Module) -> str:
    """What ``module(...)`` runs (via ``_wrapped_call_impl``): the compiled call if any."""
    compiled = getattr(module, "_compiled_call_impl", None) is not None
    return "_compiled_call_impl" if compiled else "_call_impl"


def restore(module: nn.Module, slot: str, before: Any) -> None:
    """Put back what ``module.__dict__`` held at ``slot`` (``ABSENT``: nothing)."""
    if before is ABSENT:
        module.__dict__.pop(slot, None)
    else:
        module.__dict__[slot] = before


@contextmanager
def frames_for(tree: ModuleTree) -> Iterator[None]:
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
