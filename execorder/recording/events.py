"""The event sink: backends tell a :class:`Recorder` what runs, one event at a time.

A backend reports three kinds of event: a module call starts
(:meth:`Recorder.enter`), it ends (:meth:`Recorder.exit`), and parameters are
used (:meth:`Recorder.use`, :meth:`Recorder.use_module`); a run on the meta
device may add a fourth, an assumption about values it could not know
(:meth:`Recorder.assume`), and any run a custom autograd Function that read
parameters it was not passed (:meth:`Recorder.unseen_backward`). FX reports them as
it traces; eager logs them to a flat list on its hot path and hands the
recorder the whole log (:meth:`Recorder.replay`, the same events, inlined).
The recorder keeps live module and parameter objects, never names: naming and
freezing are the report builder's job (:mod:`execorder.recording.build`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

from torch import nn

from execorder.recording.tree import ModuleTree, module_tree
from execorder.report.kinds import AssumptionKind


class Assumed(NamedTuple):
    """An event: the run assumed a selection it could not compute keeps every element, or
    made a choice another run may make otherwise: from a value drawn at random (``kind``
    ``DRAWN``, ``op`` the random function) or computed from parameters (``COMPUTED``, ``op``
    the read: a router's ``nonzero``)."""

    op: str
    where: str = ""
    kind: AssumptionKind = AssumptionKind.SELECTION
    own_generator: bool = False
    """A draw from a generator of the model's own, which the run's seed does not set."""


class Checkpointed(NamedTuple):
    """An event: a reentrant checkpoint's block starts (or ends) running in forward.

    The calls made inside are made again in backward, by the recompute.
    """

    start: bool
    by: str = ""
    """The model's own checkpoint Function that runs the block (told as the block ends);
    empty for torch's reentrant checkpoint."""
    inputs_need_grad: bool = True
    """Whether a tensor input of the block needed grad: if none did, torch never recomputes
    the block (its node is not in the graph), and what it read gets no gradient from it."""


class UnseenBackward(NamedTuple):
    """An event: a custom autograd Function's ``forward`` read ``params`` without being passed
    them; its ``backward``, which only a real backward runs, decides whether they get a
    gradient from it (usually not; reversible layers compute one themselves)."""

    function: str
    params: tuple[nn.Parameter, ...]
    where: str = ""


class InputWrite(NamedTuple):
    """An event: the current call wrote into a list, dict or dataclass it was passed that
    holds a tensor needing grad (told as the call ends). FSDP2 passes a unit a copy of such
    an argument, with those tensors replaced to hook backward: the write would be lost."""


Event = nn.Module | list[nn.Parameter] | Assumed | Checkpointed | UnseenBackward | InputWrite | None
"""One entry of an event log: a module (its call starts), ``None`` (the
current call ends), a list of parameters (one op used them), an
:class:`Assumed` (the current call assumed a value), a
:class:`Checkpointed` (a reentrant checkpoint's block starts or ends), an
:class:`UnseenBackward` (the current call ran a custom Function), or an
:class:`InputWrite` (the current call wrote into an argument's container)."""


class UsageGroup(NamedTuple):
    """Parameters used together in one call.

    ``whole_module`` is True when ``params`` are all of ``module``'s parameters
    because ``module`` itself was called (a child call, or a leaf module whose
    internals the backend cannot see); False for a direct use in an op.
    """

    module: nn.Module
    params: tuple[nn.Parameter, ...]
    whole_module: bool


@dataclass(slots=True)
class CallRecord:
    """One module call as recorded: live objects, not yet named."""

    module: nn.Module
    parent: int | None
    depth: int
    groups: list[UsageGroup] = field(default_factory=list)
    # Where this call's own group sits in the parent's groups, if it has one.
    slot_in_parent: int | None = None


class Recorder:
    """Collects the module calls and parameter uses of one forward.

    Args:
        root: The module whose forward is recorded. Its call is the first one.
        tree: ``module_tree(root)`` if the backend has it already; taken now
            otherwise. Names in the report are those of the tree at this point.

    Attributes:
        calls: Every call, in the order they started.
        param_order: Parameters in first-use order.
        first_call: By ``id(parameter)``, the index of the call that first used it.
        observed: Ids of the parameters seen used for sure (not only assumed
            inside a leaf module the backend cannot see into).
        assumptions: ``(call index, event)`` for each assumption, in order.
        after_assumption: Ids of the parameters used inside a call after it
            made an assumption (its status may rest on it).
        recomputed: Indices of the calls made inside a reentrant checkpoint's
            block, which backward makes again (:meth:`checkpointed`).
        own_checkpoints: The model's own checkpoint Functions that ran such a
            block (Megatron-LM's, DeepSpeed's), by class name, each once.
        unseen_backwards: ``(call index, event)`` for each custom Function
            whose ``forward`` read parameters it was not passed.
        input_writes: Indices of the calls that wrote into a container they were
            passed holding a tensor that needs grad (:class:`InputWrite`).
    """

    def __init__(self, root: nn.Module, tree: ModuleTree | None = None) -> None:
        self.root = root
        self.tree = tree or module_tree(root)
        self.calls: list[CallRecord] = [CallRecord(root, None, 0)]
        self.param_order: list[nn.Parameter] = []
        self.first_call: dict[int, int] = {}
        self.observed: set[int] = set()
        self._stack: list[int] = [0]
        self._module_params: dict[int, tuple[nn.Parameter, ...]] = {}
        self.assumptions: list[tuple[int, Assumed]] = []
        self.after_assumption: set[int] = set()
        # The stack depth of the outermost running call that made an assumption.
        self._assuming: int | None = None
        self.recomputed: list[int] = []
        self.own_checkpoints: list[str] = []
        self._blocks = 0  # reentrant checkpoint blocks running now
        self.unseen_backwards: list[tuple[int, UnseenBackward]] = []
        self.input_writes: list[int] = []
        self._watches: list[dict[int, nn.Parameter]] = []

    @property
    def current(self) -> CallRecord:
        """The call now running."""
        return self.calls[self._stack[-1]]

    @property
    def current_index(self) -> int:
        """The index of the call now running."""
        return self._stack[-1]

    @property
    def visited(self) -> set[nn.Parameter]:
        """The parameters used so far."""
        return set(self.param_order)

    def params_of(self, module: nn.Module) -> tuple[nn.Parameter, ...]:
        """``tuple(module.parameters())``, built from the children's cached tuples.

        Built bottom-up so that recording every call of a deep model stays
        linear in its size; the order and deduplication are those of
        ``module.parameters()``.
        """
        cache, spans = self._module_params, self.tree.spans
        params = cache.get(id(module))
        if params is not None:
            return params
        # Children before their parent, without recursion (a model may nest deeply).
        stack: list[tuple[nn.Module, bool]] = [(module, False)]
        while stack:
            current, expanded = stack.pop()
            key = id(current)
            if key in cache:
                continue
            if key in spans:
                start, end = spans[key]
                cache[key] = tuple(self.tree.params[start:end])
                continue
            children = [c for c in current._modules.values() if c is not None]
            if not expanded:
                stack.append((current, True))
                stack.extend((c, False) for c in reversed(children) if id(c) not in cache)
                continue
            found = {id(p): p for p in current._parameters.values() if p is not None}
            for child in children:
                for param in cache[id(child)]:
                    found.setdefault(id(param), param)
            cache[key] = tuple(found.values())
        return cache[id(module)]

    def enter(self, module: nn.Module) -> None:
        """A call of ``module`` starts inside the current call."""
        params = self.params_of(module)
        parent = self.current
        slot = None
        if params:
            slot = len(parent.groups)
            parent.groups.append(UsageGroup(module, params, True))
        self.calls.append(CallRecord(module, self._stack[-1], len(self._stack), [], slot))
        self._stack.append(len(self.calls) - 1)
        if self._assuming is not None:
            self.after_assumption.update(map(id, params))
        if self._blocks:
            self.recomputed.append(len(self.calls) - 1)

    def checkpointed(self, start: bool, by: str = "") -> None:
        """A reentrant checkpoint's block starts (or ends): the calls inside are recomputed.

        ``by``: the model's own checkpoint Function that ran it, if not torch's.
        """
        self._blocks += 1 if start else -1
        self._checkpointed_by(by)

    def _checkpointed_by(self, by: str) -> None:
        if by and by not in self.own_checkpoints:
            self.own_checkpoints.append(by)

    def recomputed_since(self, first: int, by: str = "") -> None:
        """The calls from index ``first`` on ran in a block of checkpoint Function ``by``,
        told after it ran."""
        self._checkpointed_by(by)
        while self.recomputed and self.recomputed[-1] >= first:
            self.recomputed.pop()
        self.recomputed.extend(range(first, len(self.calls)))

    def exit(self, module: nn.Module) -> None:
        """The current call, of ``module``, ends."""
        if len(self._stack) == 1 or self.current.module is not module:
            raise RuntimeError("execorder: module exit does not match the call being recorded")
        self._stack.pop()
        if self._assuming is not None and len(self._stack) < self._assuming:
            self._assuming = None

    def assume(self, event: Assumed) -> None:
        """The current call assumed a value it could not compute (a meta run's selection)."""
        self.assumptions.append((self._stack[-1], event))
        if self._assuming is None or len(self._stack) < self._assuming:
            self._assuming = len(self._stack)

    @contextmanager
    def reads(self) -> Iterator[dict[int, nn.Parameter]]:
        """The parameters :meth:`use` and :meth:`use_module` are told of while it is open."""
        read: dict[int, nn.Parameter] = {}
        self._watches.append(read)
        try:
            yield read
        finally:
            self._watches.remove(read)

    def input_write(self) -> None:
        """The current call wrote into a container argument holding a tensor that needs
        grad (:class:`InputWrite`)."""
        self.input_writes.append(self._stack[-1])

    def unseen_backward(self, event: UnseenBackward) -> None:
        """The current call ran a custom Function that read parameters it was not passed."""
        self.unseen_backwards.append((self._stack[-1], event))

    def use(self, params: Iterable[nn.Parameter], *, outer: int = 0) -> None:
        """Parameters are used directly in an op.

        Args:
            params: The parameters the op reads, in argument order. Repeats
                are kept once.
            outer: 0 attributes the use to the current call; 1 to the call
                that made it (for arguments the caller passes to a leaf
                module), placed before the current call's own group there,
                since arguments are evaluated before the call.
        """
        unique = unique_params(params)
        if not unique:
            return
        index = self._stack[-1 - outer]
        call = self.calls[index]
        group = UsageGroup(call.module, unique, False)
        slot = self.current.slot_in_parent if outer else None
        if slot is None:
            call.groups.append(group)
        else:
            call.groups.insert(slot, group)
            self.current.slot_in_parent = slot + 1
        self._mark(unique, index)
        self.observed.update(map(id, unique))
        for read in self._watches:
            read.update((id(p), p) for p in unique)
        if self._assuming is not None:
            self.after_assumption.update(map(id, unique))

    def use_module(self, *, assumed: bool = False) -> None:
        """The current call's module uses all its parameters (a leaf module).

        Args:
            assumed: True when the backend cannot see inside the module and
                only assumes that it uses all its parameters.
        """
        call = self.current
        params = self.params_of(call.module)
        if params:
            call.groups.append(UsageGroup(call.module, params, True))
            self._mark(params, self._stack[-1])
            if not assumed:
                self.observed.update(map(id, params))
            for read in self._watches:
                read.update((id(p), p) for p in params)
            if self._assuming is not None:
                self.after_assumption.update(map(id, params))

    def replay(self, events: Iterable[Event]) -> None:
        """Record a whole event log at once: the same as one call per event.

        A module means its call starts (:meth:`enter`), ``None`` that the
        current call ends (:meth:`exit`), a list of parameters that one op
        used them (:meth:`use`), an :class:`Assumed` an assumption
        (:meth:`assume`). It is the eager backend's hot path, hence inlined;
        ``tests/test_recording.py`` holds it to the one-by-one path.
        """
        calls, stack, params_of = self.calls, self._stack, self.params_of
        cached = self._module_params
        first_call, observed, order = self.first_call, self.observed, self.param_order
        group = tuple.__new__  # UsageGroup(...) without its Python-level __new__
        for event in events:
            if event is None:
                stack.pop()
                if self._assuming is not None and len(stack) < self._assuming:
                    self._assuming = None
            elif isinstance(event, list):
                unique = (event[0],) if len(event) == 1 else unique_params(event)
                if not unique:
                    continue
                index = stack[-1]
                call = calls[index]
                call.groups.append(group(UsageGroup, (call.module, unique, False)))
                for param in unique:
                    key = id(param)
                    observed.add(key)
                    if key not in first_call:
                        first_call[key] = index
                        order.append(param)
                if self._assuming is not None:
                    self.after_assumption.update(map(id, unique))
            elif isinstance(event, Assumed):
                self.assume(event)
            elif isinstance(event, Checkpointed):
                self.checkpointed(event.start, event.by)
            elif isinstance(event, UnseenBackward):
                self.unseen_backward(event)
            elif isinstance(event, InputWrite):
                self.input_write()
            else:
                params = cached.get(id(event)) or params_of(event)
                parent = calls[stack[-1]]
                slot = None
                if params:
                    slot = len(parent.groups)
                    parent.groups.append(group(UsageGroup, (event, params, True)))
                    if self._assuming is not None:
                        self.after_assumption.update(map(id, params))
                calls.append(CallRecord(event, stack[-1], len(stack), [], slot))
                stack.append(len(calls) - 1)
                if self._blocks:
                    self.recomputed.append(len(calls) - 1)
        if len(stack) != 1:
            raise RuntimeError("execorder: the event log leaves module calls open")

    def _mark(self, params: Iterable[nn.Parameter], index: int) -> None:
        for param in params:
            if id(param) not in self.first_call:
                self.first_call[id(param)] = index
                self.param_order.append(param)


def unique_params(params: Iterable[nn.Parameter]) -> tuple[nn.Parameter, ...]:
    """Each parameter once, in order (by identity: no tensor hashing)."""
    return tuple({id(p): p for p in params}.values())
