"""The recorder: backends tell it what runs, it builds the report.

A backend (FX today) reports three kinds of event: a module call starts
(:meth:`Recorder.enter`), it ends (:meth:`Recorder.exit`), and parameters are
used (:meth:`Recorder.use`, :meth:`Recorder.use_module`). The recorder keeps
live module and parameter objects; names are resolved once, in
:meth:`Recorder.build_report`.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Collection, Iterable, Mapping, Sequence
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
    """

    def __init__(self, root: nn.Module) -> None:
        self.root = root
        self.calls: list[CallRecord] = [CallRecord(root, None, 0)]
        self.param_order: list[nn.Parameter] = []
        self.visited: set[nn.Parameter] = set()
        # Parameters seen used for sure (not only assumed inside a leaf module).
        self.observed: set[nn.Parameter] = set()
        self._first_call: dict[nn.Parameter, int] = {}
        self._stack: list[int] = [0]
        self._module_params: dict[int, tuple[nn.Parameter, ...]] = {}

    @property
    def current(self) -> CallRecord:
        """The call now running."""
        return self.calls[self._stack[-1]]

    def params_of(self, module: nn.Module) -> tuple[nn.Parameter, ...]:
        """``tuple(module.parameters())``, built from the children's cached tuples.

        Built bottom-up so that recording every call of a deep model stays
        linear in its size; the order and deduplication are those of
        ``module.parameters()``.
        """
        params = self._module_params.get(id(module))
        if params is None:
            own = (p for p in module._parameters.values() if p is not None)
            nested = (p for child in module.children() for p in self.params_of(child))
            params = tuple(dict.fromkeys(itertools.chain(own, nested)))
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
        unique = tuple(dict.fromkeys(params))
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
        self.observed.update(unique)

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
                self.observed.update(params)

    def _mark(self, params: Iterable[nn.Parameter], index: int) -> None:
        for param in params:
            if param not in self.visited:
                self.visited.add(param)
                self.param_order.append(param)
                self._first_call[param] = index

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
        named_modules = list(self.root.named_modules(remove_duplicate=False))
        named_params = list(self.root.named_parameters(remove_duplicate=False))
        module_names = _qualnames(named_modules)
        param_names = _qualnames(named_params)
        by_module_name = dict(named_modules)
        owners: dict[int, set[int]] = {}
        for name, param in named_params:
            owner = by_module_name[name.rpartition(".")[0]]
            owners.setdefault(id(param), set()).add(id(owner))
        # parameters() order: each parameter where it is first named.
        every_param = list({id(p): p for _, p in named_params}.values())
        position = {id(p): i for i, p in enumerate(every_param)}
        live_ids = None if live is None else {id(p) for p in live}

        def module_name(module: nn.Module) -> str:
            return module_names[id(module)][0]

        call_counts: dict[int, int] = {}
        calls = []
        for index, record in enumerate(self.calls):
            names = module_names[id(record.module)]
            seen = call_counts.get(id(record.module), 0)
            call_counts[id(record.module)] = seen + 1
            uses = tuple(
                ParamGroup(
                    module_name(group.module),
                    tuple(param_names[id(p)][0] for p in group.params),
                )
                for group in record.groups
            )
            calls.append(
                ModuleCall(
                    index=index,
                    name=names[0],
                    type=type(record.module).__name__,
                    depth=record.depth,
                    parent=record.parent,
                    call=seen,
                    aliases=tuple(names[1:]),
                    uses=uses,
                )
            )

        def info(param: nn.Parameter, first_call: int | None) -> ParamInfo:
            names = param_names[id(param)]
            used = first_call is not None
            return ParamInfo(
                name=names[0],
                aliases=tuple(names[1:]),
                index=position[id(param)],
                shape=tuple(param.shape),
                dtype=str(param.dtype).removeprefix("torch."),
                numel=param.numel(),
                requires_grad=param.requires_grad,
                first_module=None if first_call is None else calls[first_call].name,
                first_call=first_call,
                assumed=used and param not in self.observed,
                dead=used
                and param.requires_grad
                and live_ids is not None
                and id(param) not in live_ids,
            )

        used = tuple(info(p, self._first_call[p]) for p in self.param_order)
        unused = tuple(info(p, None) for p in every_param if p not in self.visited)
        external = tuple(
            ExternalUse(
                param=param_names[id(param)][0],
                owner=param_names[id(param)][0].rpartition(".")[0],
                module=calls[index].name,
                call=index,
            )
            for param, index in self._external_uses(owners)
        )
        every = (*used, *unused)
        summary = Summary(
            calls=len(calls),
            modules=len(call_counts),
            params_total=len(every),
            params_used=len(used),
            numel_total=sum(p.numel for p in every),
            numel_used=sum(p.numel for p in used),
            params_dead=sum(p.dead for p in used),
            params_frozen=sum(not p.requires_grad for p in every),
            params_assumed=sum(p.assumed for p in used),
            params_no_grad=sum(p.requires_grad and (p.dead or not p.used) for p in every),
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
            backward=None if backward is None else tuple(param_names[id(p)][0] for p in backward),
            inputs=dict(inputs or {}),
        )


def _qualnames(named: Iterable[tuple[str, Any]]) -> dict[int, list[str]]:
    """Map each object's id to all its qualified names, the first one first."""
    names: dict[int, list[str]] = {}
    for name, obj in named:
        names.setdefault(id(obj), []).append(name)
    return names


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
