"""The recorder: backends tell it what runs, it builds the report.

A backend reports three kinds of event: a module call starts
(:meth:`Recorder.enter`), it ends (:meth:`Recorder.exit`), and parameters are
used (:meth:`Recorder.use`, :meth:`Recorder.use_module`). FX reports them as
it traces; eager logs them to a list on its hot path and hands the recorder
the whole log (:meth:`Recorder.replay`). The recorder keeps live module and
parameter objects; names come from one walk of the module tree
(:func:`module_tree`) and are resolved once, in :meth:`Recorder.build_report`.
"""

from __future__ import annotations

import gc
import inspect
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from torch import nn

from execorder.errors import ConcreteArgError
from execorder.report import ExternalUse, ModuleCall, ParamGroup, ParamInfo, Report, Summary


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
    """Collects module calls and parameter uses of one forward.

    Args:
        root: The module whose forward is recorded. Its call is the first one.
        tree: ``module_tree(root)`` if the backend has it already; taken now
            otherwise. Names in the report are those of the tree at this point.
    """

    def __init__(self, root: nn.Module, tree: ModuleTree | None = None) -> None:
        self.root = root
        self.tree = tree or module_tree(root)
        self.calls: list[CallRecord] = [CallRecord(root, None, 0)]
        self.param_order: list[nn.Parameter] = []
        # By id(parameter): the call of its first use; whether it was seen
        # used for sure (not only assumed inside a leaf module).
        self._first_call: dict[int, int] = {}
        self._observed: set[int] = set()
        self._stack: list[int] = [0]
        self._module_params: dict[int, tuple[nn.Parameter, ...]] = {}

    @property
    def current(self) -> CallRecord:
        """The call now running."""
        return self.calls[self._stack[-1]]

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
        params = self._module_params.get(id(module))
        if params is None and id(module) in self.tree.spans:
            start, end = self.tree.spans[id(module)]
            params = self._module_params[id(module)] = tuple(self.tree.params[start:end])
        if params is None:
            found = {id(p): p for p in module._parameters.values() if p is not None}
            for child in module._modules.values():
                if child is not None:
                    for param in self.params_of(child):
                        found.setdefault(id(param), param)
            params = tuple(found.values())
            self._module_params[id(module)] = params
        return params

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

    def exit(self, module: nn.Module) -> None:
        """The current call, of ``module``, ends."""
        if len(self._stack) == 1 or self.current.module is not module:
            raise RuntimeError("execorder: module exit does not match the call being recorded")
        self._stack.pop()

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
        self._observed.update(map(id, unique))

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
                self._observed.update(map(id, params))

    def replay(self, events: Iterable[nn.Module | list[nn.Parameter] | None]) -> None:
        """Record a whole event log at once; the same as one call per event.

        A module means its call starts (:meth:`enter`), ``None`` that the
        current call ends (:meth:`exit`), a list of parameters that one op
        used them (:meth:`use`). It is the eager backend's hot path, hence
        inlined.
        """
        calls, stack, params_of = self.calls, self._stack, self.params_of
        cached = self._module_params
        first_call, observed, order = self._first_call, self._observed, self.param_order
        group = tuple.__new__  # UsageGroup(...) without its Python-level __new__
        for event in events:
            if event is None:
                stack.pop()
            elif isinstance(event, list):
                unique = (event[0],) if len(event) == 1 else unique_params(event)
                index = stack[-1]
                call = calls[index]
                call.groups.append(group(UsageGroup, (call.module, unique, False)))
                for param in unique:
                    key = id(param)
                    observed.add(key)
                    if key not in first_call:
                        first_call[key] = index
                        order.append(param)
            else:
                params = cached.get(id(event)) or params_of(event)
                parent = calls[stack[-1]]
                slot = None
                if params:
                    slot = len(parent.groups)
                    parent.groups.append(group(UsageGroup, (event, params, True)))
                calls.append(CallRecord(event, stack[-1], len(stack), [], slot))
                stack.append(len(calls) - 1)
        if len(stack) != 1:
            raise RuntimeError("execorder: the event log leaves module calls open")

    def _mark(self, params: Iterable[nn.Parameter], index: int) -> None:
        for param in params:
            if id(param) not in self._first_call:
                self._first_call[id(param)] = index
                self.param_order.append(param)

    def _on_stack(self, index: int | None, modules: set[int]) -> bool:
        """Whether any of ``modules`` (ids) runs call ``index`` or one enclosing it."""
        while index is not None:
            call = self.calls[index]
            if id(call.module) in modules:
                return True
            index = call.parent
        return False

    def _external_uses(self, owners: dict[int, set[int]]) -> list[tuple[nn.Parameter, int]]:
        """Direct uses of a parameter while none of its owning modules is running."""
        found: dict[tuple[int, int], tuple[nn.Parameter, int]] = {}
        for index, call in enumerate(self.calls):
            for group in call.groups:
                if group.whole_module:
                    continue
                for param in group.params:
                    key = (id(param), index)
                    if key not in found and not self._on_stack(index, owners[id(param)]):
                        found[key] = (param, index)
        return list(found.values())

    def build_report(
        self,
        *,
        target: str,
        mode: str,
        concrete_args: Mapping[str, Any] | None = None,
        live: Collection[nn.Parameter] | None = None,
        backward: Sequence[nn.Parameter] | None = None,
        inputs: Mapping[str, str] | None = None,
    ) -> Report:
        """Name everything recorded and freeze it into a :class:`Report`.

        Args:
            target: What was traced.
            mode: The backend.
            concrete_args: The concrete arguments of the trace.
            live: Parameters with a use that reaches an output, from the
                backend's liveness analysis; the other used trainable
                parameters are dead. None when there was no such analysis.
            backward: Parameters in the order their gradients were
                accumulated, when a backward was run.
            inputs: Descriptions of the input tensors, by argument name.
        """
        tree = self.tree
        module_names, param_names = tree.module_names, tree.param_names
        observed, first_call = self._observed, self._first_call
        live_ids = None if live is None else {id(p) for p in live}
        param_name = {key: names[0] for key, names in param_names.items()}
        new_call, new_group = ModuleCall, ParamGroup

        # Per module, named once: its name, aliases, type, and the group its
        # call adds to its parent.
        named: dict[int, tuple[str, tuple[str, ...], str]] = {}
        whole_groups: dict[int, ParamGroup] = {}
        call_counts: dict[int, int] = {}
        calls: list[ModuleCall] = []
        for index, record in enumerate(self.calls):
            module = record.module
            key = id(module)
            about = named.get(key)
            if about is None:
                names = module_names[key]
                about = named[key] = (names[0], tuple(names[1:]), type(module).__name__)
            seen = call_counts.get(key, 0)
            call_counts[key] = seen + 1
            uses = []
            for group_module, params, whole_module in record.groups:
                group = whole_groups.get(id(group_module)) if whole_module else None
                if group is None:
                    group = new_group(
                        module_names[id(group_module)][0],
                        tuple([param_name[id(p)] for p in params]),
                    )
                    if whole_module:
                        whole_groups[id(group_module)] = group
                uses.append(group)
            name, aliases, kind = about
            calls.append(
                new_call(index, name, kind, record.depth, record.parent, seen, aliases, tuple(uses))
            )

        new_info = ParamInfo
        position = {id(p): i for i, p in enumerate(tree.params)}
        counts = dict.fromkeys(("numel", "dead", "frozen", "assumed", "no_grad"), 0)

        def info(param: nn.Parameter, first: int | None) -> ParamInfo:
            key = id(param)
            names = param_names[key]
            requires_grad = param.requires_grad
            numel = param.numel()
            used = first is not None
            assumed = used and key not in observed
            dead = used and requires_grad and live_ids is not None and key not in live_ids
            counts["numel"] += numel
            counts["dead"] += dead
            counts["frozen"] += not requires_grad
            counts["assumed"] += assumed
            counts["no_grad"] += requires_grad and (dead or not used)
            return new_info(
                names[0],
                tuple(names[1:]),
                position[key],
                tuple(param.shape),
                str(param.dtype).removeprefix("torch."),
                numel,
                requires_grad,
                None if first is None else calls[first].name,
                first,
                assumed,
                dead,
            )

        used = tuple([info(p, first_call[id(p)]) for p in self.param_order])
        numel_used = counts["numel"]
        unused = tuple([info(p, None) for p in tree.params if id(p) not in first_call])
        external = tuple(
            ExternalUse(
                param=param_name[id(param)],
                owner=param_name[id(param)].rpartition(".")[0],
                module=calls[index].name,
                call=index,
            )
            for param, index in self._external_uses(tree.owners)
        )
        summary = Summary(
            calls=len(calls),
            modules=len(call_counts),
            params_total=len(used) + len(unused),
            params_used=len(used),
            numel_total=counts["numel"],
            numel_used=numel_used,
            params_dead=counts["dead"],
            params_frozen=counts["frozen"],
            params_assumed=counts["assumed"],
            params_no_grad=counts["no_grad"],
            external_uses=len(external),
        )
        return Report(
            target=target,
            mode=mode,
            concrete_args=dict(concrete_args or {}),
            modules=tuple(calls),
            params=used,
            unused=unused,
            summary=summary,
            external=external,
            backward=None if backward is None else tuple([param_name[id(p)] for p in backward]),
            inputs=dict(inputs or {}),
        )


def unique_params(params: Iterable[nn.Parameter]) -> tuple[nn.Parameter, ...]:
    """Each parameter once, in order (by identity: no tensor hashing)."""
    return tuple({id(p): p for p in params}.values())


class ModuleTree(NamedTuple):
    """Names and owners of a module tree, from one walk.

    ``module_names`` and ``param_names`` map ids to every qualified name, in
    ``named_modules``/``named_parameters(remove_duplicate=False)`` order, so
    the first is the canonical one; ``modules`` and ``params`` are in
    ``modules()`` and ``parameters()`` order;
    ``owners`` maps a parameter's id to the ids of the modules holding it.
    When no module or parameter is shared, each module's parameters are a
    contiguous run of ``params``: ``spans`` maps a module's id to its
    ``(start, end)`` there, so ``module.parameters()`` is a slice. With
    sharing it is empty.
    """

    module_names: dict[int, list[str]]
    param_names: dict[int, list[str]]
    modules: list[nn.Module]
    params: list[nn.Parameter]
    owners: dict[int, set[int]]
    spans: dict[int, tuple[int, int]]

    @property
    def has_lazy_params(self) -> bool:
        """Whether a lazy module (``nn.LazyLinear``, ...) awaits its first forward."""
        return any(nn.parameter.is_lazy(p) for p in self.params)


def module_tree(root: nn.Module) -> ModuleTree:
    """Walk ``root`` once, as ``named_modules(remove_duplicate=False)`` does."""
    module_names: dict[int, list[str]] = {}
    param_names: dict[int, list[str]] = {}
    modules: dict[int, nn.Module] = {}
    params: dict[int, nn.Parameter] = {}
    owners: dict[int, set[int]] = {}
    spans: dict[int, tuple[int, int]] = {}
    shared = False

    def visit(prefix: str, module: nn.Module) -> None:
        nonlocal shared
        key = id(module)
        start = len(params)
        names = module_names.get(key)
        if names is None:
            module_names[key] = [prefix]
            modules[key] = module
        else:
            names.append(prefix)
            shared = True
        dot = f"{prefix}." if prefix else ""
        for name, param in module._parameters.items():
            if param is not None:
                param_key = id(param)
                names = param_names.get(param_key)
                if names is None:
                    param_names[param_key] = [dot + name]
                    params[param_key] = param
                    owners[param_key] = {key}
                else:
                    names.append(dot + name)
                    owners[param_key].add(key)
                    shared = True
        for name, child in module._modules.items():
            if child is not None:
                visit(dot + name, child)
        spans[key] = (start, len(params))

    visit("", root)
    return ModuleTree(
        module_names,
        param_names,
        list(modules.values()),
        list(params.values()),
        owners,
        {} if shared else spans,
    )


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for a trace (both backends).

    A trace allocates many long-lived objects (FX nodes and proxies, recorded
    events, report records); each full collection rescans them all, which
    makes tracing super-linear in model size and adds pauses to eager runs.
    Nothing collectable is lost: the collector resumes afterwards.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def check_forward_args(model: nn.Module, names: Iterable[str]) -> None:
    """Check that each name is an argument of ``model.forward`` (both backends use it).

    Raises:
        ConcreteArgError: Naming the unknown argument and the valid names.
    """
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    valid = [p.name for p in params if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    for name in names:
        if name not in valid:
            raise ConcreteArgError(
                f"{type(model).__name__}.forward has no argument {name!r}; "
                f"its arguments are: {', '.join(valid) or '(none)'}"
            )
