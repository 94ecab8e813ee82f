"""Custom autograd Functions, as FX traces them.

``Function.apply`` runs the Function's ``forward`` under ``no_grad``: the ops
it records carry no gradient, and what a real backward does instead is the
Function's own ``backward``, which FX never sees. Stopping the graph walk
inside would call every parameter upstream of a custom Function dead (a fused
kernel, a straight-through estimator, a quantizer) while a real backward
gives them gradients.

So while FX traces, each ``Function.apply`` that gets traced values notes its
call (:class:`FunctionCall`) on the nodes it returns: the liveness walk goes
from those straight to the call's inputs, as the autograd engine goes from
the Function's node to its inputs' accumulators (the tensors passed as
arguments: one inside a list is no input of autograd's, and gets a gradient
only if ``backward`` sets it itself, an unseen backward as for a parameter
``forward`` reads without being passed it). That holds when grad was on
where it was called; a ``backward`` returning None for an input still reaches
that input's accumulator (DDP counts it ready, though ``.grad`` stays None).

What ``forward`` tells its ``ctx`` about traced values is noted rather than
passed on (autograd's checks take tensors only): an output it marks
non-differentiable carries no gradient (it is not stamped, and was made
under ``no_grad``); an input it marks dirty is written by the Function, so
the in-place ops on it inside ``forward`` are stamped too, and a read of the
input after the call leads to the call's inputs, as the rebased history does.

A Function that keeps a ``run_function`` on its ``ctx`` (Megatron-LM's and
DeepSpeed's checkpoint) runs that function again in backward, with grad on:
its ops are taken as that recompute makes them. When ``forward`` calls the
function it kept, the call runs with grad on, as the recompute's does, so a
``no_grad`` inside the block, or a custom Function called in it, is traced as
backward meets it. A Function whose ``forward`` takes no ``ctx`` keeps it in
``setup_context``, which autograd runs after ``forward``: a dry run of it on a
stand-in ``ctx``, before ``forward``, tells which function it keeps.
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.utils._pytree import tree_leaves

from execorder.backends.checkpointing import REGION, Region, Regions, contexts_seen, recomputes
from execorder.errors import user_site
from execorder.recording import Recorder, UnseenBackward

FUNCTION_CALL = "execorder_function_call"
"""``node.meta`` key: the custom autograd Function call whose output the node is."""

GRAD_ENABLED = "execorder_grad_enabled"
"""``node.meta`` key: whether grad mode was on when the node was made."""


class FunctionCall:
    """One ``Function.apply`` as FX traced it.

    Attributes:
        inputs: The nodes of its traced arguments.
        outer_grad: Whether grad mode was on where it was called (its outputs
            have a history only then).
    """

    def __init__(self, inputs: list[torch.fx.Node], outer_grad: bool) -> None:
        self.inputs, self.outer_grad = inputs, outer_grad


class _Told:
    """What one ``forward`` told its ``ctx`` about traced values."""

    def __init__(self) -> None:
        self.non_differentiable: set[torch.fx.Node] = set()
        self.dirty: set[torch.fx.Node] = set()


def _noting(told: list[_Told], field: str, original: Any) -> Any:
    """A ``ctx`` method that notes its traced arguments in ``told`` and passes the rest on."""

    def method(ctx: Any, *args: Any) -> None:
        if told:
            getattr(told[-1], field).update(a.node for a in args if isinstance(a, torch.fx.Proxy))
        original(ctx, *(a for a in args if not isinstance(a, torch.fx.Proxy)))

    return method


def _made_since(graph: torch.fx.Graph, last: torch.fx.Node | None) -> list[torch.fx.Node]:
    """The nodes added to ``graph`` after ``last`` (all of them for None)."""
    made = []
    for node in reversed(graph.nodes):
        if node is last:
            break
        made.append(node)
    return made


class _KeptFunctions:
    """The callables a Function's ``forward`` is given, each run with grad on when it is the
    ``run_function`` the ``ctx`` keeps (``seen[0]``), as backward's recompute runs it.

    Attributes:
        recomputed: The nodes made while such a function ran: their grad mode
            is the recompute's already.
    """

    def __init__(self, graph: torch.fx.Graph, seen: list[Any]) -> None:
        self.graph, self.seen = graph, seen
        self.recomputed: set[torch.fx.Node] = set()
        self.planned: object = None
        """What ``setup_context`` will keep, found by a dry run before ``forward``."""

    def plan(self, cls: type, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Find what a Function whose ``forward`` takes no ``ctx`` keeps: its
        ``setup_context`` runs only after ``forward``, so it is run first on a stand-in."""
        if not _sets_up_context(cls):
            return
        stand_in = _StandIn()
        try:
            bound = inspect.signature(cls.forward).bind(*args, **kwargs)  # type: ignore[attr-defined]
            bound.apply_defaults()
            cls.setup_context(stand_in, bound.args, None)  # type: ignore[attr-defined]
        except Exception:  # it needs the output, or more than a stand-in gives
            return
        self.planned = vars(stand_in).get("run_function")

    def _run(self, function: Callable[..., Any], kept: object) -> Callable[..., Any]:
        @functools.wraps(function)
        def run(*args: Any, **kwargs: Any) -> Any:
            ctx = self.seen[0] if self.seen else None
            keeps = getattr(ctx, "run_function", None) or self.planned
            if keeps is not (kept if kept is not None else run):
                return function(*args, **kwargs)
            last = next(iter(reversed(self.graph.nodes)), None)
            try:
                with torch.enable_grad():
                    return function(*args, **kwargs)
            finally:
                self.recomputed.update(_made_since(self.graph, last))

        return run

    @contextmanager
    def given(self, args: tuple[Any, ...], wrap: bool = True) -> Iterator[tuple[Any, ...]]:
        """``args`` with each function wrapped; a module's ``forward`` is, for the duration
        (``args`` as they are when not to ``wrap``)."""
        if not wrap:
            yield args
            return
        modules = {id(a): a for a in args if isinstance(a, nn.Module) and "forward" not in vars(a)}
        for module in modules.values():
            module.forward = self._run(module.forward, module)
        functions = (types.FunctionType, types.MethodType, functools.partial)
        try:
            yield tuple(self._run(a, None) if isinstance(a, functions) else a for a in args)
        finally:
            for module in modules.values():
                del module.forward


class _StandIn:
    """A ``ctx`` for a dry run of ``setup_context``: keeps what is set on it, and any method
    (``save_for_backward``, ``mark_dirty``, ...) does nothing."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def _sets_up_context(cls: type) -> bool:
    """Whether a Function defines ``setup_context`` (its ``forward`` takes no ``ctx``)."""
    base = torch.autograd.function._SingleLevelFunction.setup_context
    return getattr(cls, "setup_context", base) is not base


def _recomputed(
    made: list[torch.fx.Node],
    inputs: list[torch.fx.Node],
    outer_grad: bool,
    regions: Regions,
    as_recomputed: set[torch.fx.Node],
) -> None:
    """Take a recomputing Function's ops as made with grad (those of ``as_recomputed`` as
    they were made), in a region of their own."""
    outer = regions.current
    region = Region(inputs, outer_grad, outer)
    regions.opened = True
    for node in made:
        if node not in as_recomputed:
            node.meta[GRAD_ENABLED] = True
        inner = node.meta.get(REGION)
        if inner is outer:
            node.meta[REGION] = region
            continue
        while inner is not None and inner.parent is not outer and inner.parent is not region:
            inner = inner.parent
        if inner is not None and inner.parent is outer:  # a checkpoint called inside: with grad
            inner.parent, inner.outer_grad = region, True


@contextmanager
def functions_traced(
    regions: Regions | None = None, recorder: Recorder | None = None
) -> Iterator[list[FunctionCall]]:
    """Stamp the outputs of every traced ``Function.apply`` with its :class:`FunctionCall`.

    Subclasses that define ``apply`` themselves (the reentrant checkpoint's,
    while :func:`execorder.backends.checkpointing.regions_traced` patches it)
    are left to their own. A Function that keeps a ``run_function`` on its
    ``ctx`` is taken as recomputing its ops, in ``regions``. Any other,
    called with grad on, tells ``recorder`` the parameters its ``forward``
    read without being passed them (:class:`UnseenBackward`); what it yields
    gets each such Function's call, in the order told (whether its backward
    runs at all shows only once the graph is whole). Restored exactly on
    exit, also when tracing raises.
    """
    Function, Ctx = torch.autograd.Function, torch.autograd.function.FunctionCtx
    saved = Function.__dict__["apply"]
    original = saved.__func__
    saved_ctx = {name: Ctx.__dict__[name] for name in ("mark_non_differentiable", "mark_dirty")}
    told: list[_Told] = []
    unseen: list[FunctionCall] = []

    def apply(cls: type, *args: Any, **kwargs: Any) -> Any:
        traced = [a for a in tree_leaves((args, kwargs)) if isinstance(a, torch.fx.Proxy)]
        if not traced:
            return original(cls, *args, **kwargs)
        # Autograd takes the tensors passed as arguments themselves for the
        # Function's inputs; one inside a list it passes to forward unseen.
        inputs = [a.node for a in (*args, *kwargs.values()) if isinstance(a, torch.fx.Proxy)]
        graph = traced[0].tracer.graph
        last = next(iter(reversed(graph.nodes)), None)
        outer_grad = torch.is_grad_enabled()
        told.append(_Told())
        seen: list[Any] = []
        kept = _KeptFunctions(graph, seen)
        first_call = regions.count() if regions is not None else 0
        watch: AbstractContextManager[dict[int, nn.Parameter]] = (
            recorder.reads() if recorder is not None and outer_grad else nullcontext({})
        )
        try:
            with (
                contexts_seen(cls, seen),
                kept.given(args, regions is not None) as given,
                watch as read,
            ):
                if regions is not None:
                    kept.plan(cls, given, kwargs)
                result = original(cls, *given, **kwargs)
        finally:
            this = told.pop()
        if regions is not None and recomputes(seen):
            _recomputed(_made_since(graph, last), inputs, outer_grad, regions, kept.recomputed)
            regions.recomputed_since(first_call, cls.__name__)
            return result
        call = FunctionCall(inputs, outer_grad)
        if read and recorder is not None:
            passed = {n.target for n in inputs if n.op == "get_attr"}
            names = recorder.tree.param_names
            hidden = tuple(p for key, p in read.items() if passed.isdisjoint(names[key]))
            if hidden:
                recorder.unseen_backward(UnseenBackward(cls.__name__, hidden, user_site()))
                unseen.append(call)
        for out in tree_leaves(result):
            node = out.node if isinstance(out, torch.fx.Proxy) else None
            if node is not None and node not in inputs and node not in this.non_differentiable:
                node.meta[FUNCTION_CALL] = call
        if this.dirty:
            for node in _made_since(graph, last):
                if node.args and node.args[0] in this.dirty:
                    node.meta[FUNCTION_CALL] = call
        return result

    Function.apply = classmethod(apply)  # type: ignore[assignment, method-assign]
    for name, field in (("mark_non_differentiable", "non_differentiable"), ("mark_dirty", "dirty")):
        setattr(Ctx, name, _noting(told, field, saved_ctx[name]))
    try:
        yield unseen
    finally:
        Function.apply = saved  # type: ignore[method-assign]
        for name, method in saved_ctx.items():
            setattr(Ctx, name, method)
