"""The FX backend: record execution order while ``torch.fx`` traces a forward.

The tracer's ``call_module`` (every submodule call) and ``create_node`` (every
op, every leaf-module call, and the output, so a parameter returned as it is
counts as used) are patched to report to a
:class:`~execorder.recording.Recorder`. Liveness comes from the traced graph
(:mod:`execorder.backends.fx_liveness`) before the report is built.
"""

from __future__ import annotations

import builtins
import functools
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.fx
from torch import nn

from execorder.backends.arguments import held, written
from execorder.backends.checkpointing import REGION, Regions, regions_traced
from execorder.backends.common import (
    DEEP,
    METADATA_ATTRS,
    METADATA_METHODS,
    check_forward_args,
    gc_paused,
    owner,
)
from execorder.backends.draws import MOVED, generators_of, packages_of, watching_draws
from execorder.backends.eager_liveness import live_params as eager_live_params
from execorder.backends.fx_functions import functions_traced
from execorder.backends.fx_liveness import (
    COMPUTED_FROM,
    GRAD_ENABLED,
    live_params,
    needs_grad,
    never_recomputed,
    output_reach,
)
from execorder.errors import (
    ControlFlowError,
    DifferentiatesError,
    IterationError,
    LazyModulesError,
    ScriptedModuleError,
    TooDeepError,
    TraceFailure,
    UserExitError,
    WrappedForwardError,
    first_line,
    user_code,
    user_site,
)
from execorder.recording import Assumed, Recorder, build_report
from execorder.report import AssumptionKind, Mode, Report

_OP_KINDS = frozenset({"call_function", "call_method"})

# torch.nn leaf modules known to read every parameter they have on every
# call, one op each: their use is observed.
_USES_ALL_PARAMS: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Bilinear, nn.Embedding, nn.EmbeddingBag,
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.PReLU,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
)  # fmt: skip
# torch.nn leaf modules that read every parameter on every call, in an order
# FX cannot see (fused kernels, inner modules read directly): their use is
# certain, its order within the call assumed (named_parameters() order).
_READS_ALL_UNSEEN: tuple[type[nn.Module], ...] = (
    nn.RNNBase, nn.RNNCellBase, nn.MultiheadAttention, nn.Transformer,
    nn.TransformerEncoder, nn.TransformerDecoder,
    nn.TransformerEncoderLayer, nn.TransformerDecoderLayer,
)  # fmt: skip


def uses_all_params(module: nn.Module) -> bool:
    """Whether a leaf module is known to read all its parameters when called."""
    return type(module) in _USES_ALL_PARAMS


def _use_unknown(module: nn.Module) -> bool:
    """A torch.nn module with parameters it may not read on every call.

    FX would make it a leaf and take all its parameters as used: a confident
    "every parameter gets a gradient" for ``nn.AdaptiveLogSoftmaxWithLoss``,
    whose clusters run only for the targets in them. Traced into instead, its
    forward shows what it reads, or FX says why it cannot trace it.
    """
    if uses_all_params(module) or isinstance(module, _READS_ALL_UNSEEN):
        return False
    return next(module.parameters(), None) is not None


_PATCHED = ("call_module", "create_node")


def _reads_metadata(node: torch.fx.Node) -> bool:
    """``w.shape``, ``w.dtype``, ``w.size()``, ...: no data moves, no gradient flows."""
    if node.op == "call_method":
        return node.target in METADATA_METHODS
    return node.target is builtins.getattr and len(node.args) > 1 and node.args[1] in METADATA_ATTRS


def _attribute(module: nn.Module, target: str) -> object:
    """What a ``get_attr`` node's dotted target names on ``module`` (None if nothing)."""
    value: object = module
    for name in target.split("."):
        value = getattr(value, name, None)
    return value


def _computed_from(value: object, params: list[nn.Parameter]) -> list[nn.Parameter]:
    """The parameters a tensor's autograd history leads to, in ``params``' order.

    Forward can compute on a parameter FX never proxied (one from
    ``self.parameters()``: ``sum(p.pow(2).sum() for p in ...)``, DDP's
    well-known fix for unused parameters). That runs for real while FX
    traces, and the result enters the graph as a tensor constant; its
    history, walked as the eager backend walks an output's, says which
    parameters it was computed from.
    """
    if not isinstance(value, torch.Tensor) or value.grad_fn is None:
        return []
    reached = eager_live_params(value, params)
    return [param for param in params if param in reached]


def _traced(value: Any) -> bool:
    return isinstance(value, torch.fx.Proxy)


@contextmanager
def record_tracer(
    tracer: torch.fx.Tracer,
    root_module: nn.Module,
    recorder: Recorder,
    *,
    metadata_is_use: bool = False,
    regions: Regions | None = None,
    writes: list[tuple[int, list[torch.fx.Node]]] | None = None,
) -> Iterator[Recorder]:
    """Patch ``tracer`` so that tracing ``root_module`` reports to ``recorder``.

    ``call_module`` (every submodule call) reports calls. ``create_node``
    (under every op, every leaf-module call, and the output) reports the
    parameters a node reads: torch.fx has already turned each argument,
    keyword or nested in a list or dict, into an input node, and only
    ``get_attr`` nodes of parameters count, never a forward input that shares
    a parameter's name. Works on any ``torch.fx.Tracer``, a user's subclass
    included; the patched methods are restored on exit, also when tracing raises.

    Args:
        tracer: The tracer instance to patch.
        root_module: The module that will be traced.
        recorder: Receives the events.
        metadata_is_use: Count reads of a parameter's metadata (``.shape``,
            ``.dtype``, ``.size()``) as uses, as PyTorch's own tracer does.
        regions: Where reentrant checkpoint regions are tracked, if they are:
            each node is stamped with its innermost region.
        writes: Where to note each call that writes into a list, dict or
            dataclass it is passed holding a traced value, with the nodes it
            held (whether one needs grad is known once the trace is done).

    Yields:
        The recorder.
    """
    by_name = dict(root_module.named_parameters())
    own = list(by_name.values())
    orig_call_module = tracer.call_module
    orig_create_node = tracer.create_node
    # Restore exactly: methods patched on the instance before are put back,
    # class methods are uncovered again by deleting the instance attribute.
    saved = {name: vars(tracer)[name] for name in _PATCHED if name in vars(tracer)}

    def params_read(node: torch.fx.Node) -> list[nn.Parameter]:
        return [
            by_name[arg.target]
            for arg in node.all_input_nodes
            if arg.op == "get_attr" and arg.target in by_name
        ]

    named = recorder.tree.module_names

    def call_module(
        module: nn.Module,
        forward: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        if id(module) not in named:  # a wrapper the tree walks through: not a call of its own
            return orig_call_module(module, forward, args, kwargs)
        if isinstance(module, torch.jit.ScriptModule) and recorder.params_of(module):
            raise _ScriptedModule(module, len(recorder.params_of(module)))
        recorder.enter(module)
        passed = held(args, kwargs, _traced) if writes is not None else None
        output = orig_call_module(module, forward, args, kwargs)
        if passed and writes is not None and (values := written(passed)):
            writes.append((recorder.current_index, [v.node for v in values]))
        recorder.exit(module)
        return output

    def create_node(kind: str, *args: Any, **kwargs: Any) -> torch.fx.Node:
        node = orig_create_node(kind, *args, **kwargs)
        if kind in ("call_function", "call_method") and node.target in _DIFFERENTIATES:
            raise _Differentiates(str(node.target))
        # forward really runs while FX traces: a no_grad block is in effect now.
        node.meta[GRAD_ENABLED] = torch.is_grad_enabled()
        if regions is not None:
            node.meta[REGION] = regions.current
        if kind in _OP_KINDS:
            if metadata_is_use or not _reads_metadata(node):
                recorder.use(params_read(node))
        elif kind == "output":
            recorder.use(params_read(node))
        elif kind == "get_attr" and node.target not in by_name:
            # A tensor constant: computed from parameters outside the trace, it uses them here.
            params = _computed_from(_attribute(root_module, str(node.target)), own)
            if params:
                node.meta[COMPUTED_FROM] = params
                recorder.use(params)
        elif kind == "call_module":
            # The caller evaluated the arguments; the leaf uses all its own
            # parameters, which FX cannot see into.
            recorder.use(params_read(node), outer=1)
            recorder.use_module(assumed=not uses_all_params(recorder.current.module))
        return node

    tracer.call_module = call_module  # type: ignore[method-assign, assignment]
    tracer.create_node = create_node  # type: ignore[method-assign]
    try:
        yield recorder
    finally:
        for name in _PATCHED:
            if name in saved:
                setattr(tracer, name, saved[name])
            else:
                delattr(tracer, name)


def _hook_result(hook: Callable[..., Any], module: nn.Module, given: tuple[Any, ...]) -> Any:
    """What a forward hook returns on traced values; None when it cannot run on them."""
    try:
        return hook(module, *given)
    except (torch.fx.proxy.TraceError, TypeError, ValueError, RuntimeError, NotImplementedError):
        return None


def _hooked(
    m: nn.Module, call: Callable[[Any, Any], Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``call(args, kwargs)`` with ``m``'s own forward hooks run around it, as
    ``Module.__call__`` runs them; a hook that cannot run on traced values (a
    logging hook's ``.item()``) is left out, as torch.fx leaves every hook out."""
    for key, hook in list(m._forward_pre_hooks.items()):
        with_kwargs = key in m._forward_pre_hooks_with_kwargs
        result = _hook_result(hook, m, (args, kwargs) if with_kwargs else (args,))
        if result is None:
            continue
        if with_kwargs and isinstance(result, tuple) and len(result) == 2:
            args, kwargs = result
        elif not with_kwargs:
            args = result if isinstance(result, tuple) else (result,)
    output = call(args, kwargs)
    for key, hook in list(m._forward_hooks.items()):
        with_kwargs = key in m._forward_hooks_with_kwargs
        given = (args, kwargs, output) if with_kwargs else (args, output)
        result = _hook_result(hook, m, given)
        if result is not None:
            output = result
    return output


class _Tracer(torch.fx.Tracer):
    """A ``torch.fx.Tracer`` with linear-time parameter and buffer lookup.

    torch.fx finds a parameter's name by walking ``root.named_parameters()`` on
    every attribute read and every argument, which is quadratic in model size.
    Here the names are looked up in dicts built once per trace; the names are
    the same (the first from ``named_parameters()``).
    """

    def trace(self, root: Any, concrete_args: dict[str, Any] | None = None) -> torch.fx.Graph:
        if isinstance(root, nn.Module):
            self._param_names = {id(p): n for n, p in root.named_parameters()}
            self._buffer_names = {id(b): n for n, b in root.named_buffers()}
        return super().trace(root, concrete_args)

    def call_module(
        self,
        m: nn.Module,
        forward: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """A leaf's call, with its own forward hooks run around it (torch.fx makes a leaf one
        node and runs none: a LoRA added by a hook on its ``nn.Linear`` went unseen, its
        parameters called unused)."""
        hooked = m._forward_pre_hooks or m._forward_hooks
        if not hooked or not self.is_leaf_module(m, self.path_of_module(m)):
            return super().call_module(m, forward, args, kwargs)
        plain = super().call_module
        return _hooked(m, lambda a, k: plain(m, forward, a, k), args, kwargs)

    def create_args_for_root(
        self, root_fn: Callable[..., Any], is_module: bool, concrete_args: Any = None
    ) -> tuple[Any, list[Any]]:
        """The root's forward, with the model's own forward hooks run around it, as
        ``Module.__call__`` runs them (torch.fx traces ``forward`` alone)."""
        fn, args = super().create_args_for_root(root_fn, is_module, concrete_args)
        root = self.root
        hooked = is_module and (root._forward_pre_hooks or root._forward_hooks)
        if not hooked or fn is not root_fn:  # (a root whose arguments torch.fx flattened: as is)
            return fn, args

        @functools.wraps(fn)
        def forward(module: nn.Module, *given: Any) -> Any:
            return _hooked(module, lambda a, k: fn(module, *a, **k), given, {})

        return forward, args

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        """torch.nn's modules, as torch.fx has it, but those whose parameter use is
        unknown, and a pooling that returns its indices (which carry no gradient)."""
        if getattr(m, "return_indices", False) is True:
            return False
        return super().is_leaf_module(m, module_qualified_name) and not _use_unknown(m)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        if isinstance(attr_val, nn.Parameter):
            name = self._param_names.get(id(attr_val))
        elif self.proxy_buffer_attributes and isinstance(attr_val, torch.Tensor):
            name = self._buffer_names.get(id(attr_val))
        else:
            return attr_val
        if name is None:
            return attr_val
        proxy = parameter_proxy_cache.get(name)
        if proxy is None:
            factory = None
            if self.param_shapes_constant:

                def factory(node: torch.fx.Node) -> torch.fx.Proxy:
                    return torch.fx.proxy.ParameterProxy(self, node, name, attr_val)

            proxy = self.create_proxy("get_attr", name, (), {}, proxy_factory_fn=factory)
            parameter_proxy_cache[name] = proxy
        return proxy

    def create_arg(self, a: Any) -> Any:
        if isinstance(a, torch.Tensor):
            names = self._param_names if isinstance(a, nn.Parameter) else self._buffer_names
            name = names.get(id(a))
            if name is not None:
                return self.create_node("get_attr", name, (), {})
        return super().create_arg(a)

    def to_bool(self, obj: torch.fx.Proxy) -> bool:
        raise _ControlFlowError(obj.node)

    def iter(self, obj: torch.fx.Proxy) -> Iterator[Any]:
        raise _IterationError(obj.node)


class _ControlFlowError(torch.fx.proxy.TraceError):
    """Control flow depends on a traced value; remembers which node."""

    def __init__(self, node: torch.fx.Node) -> None:
        super().__init__("symbolically traced variables cannot be used as inputs to control flow")
        self.node = node


_DIFFERENTIATES: tuple[Any, ...] = (torch.autograd.grad, torch.autograd.backward, "backward")


class _Differentiates(Exception):
    """Forward takes a derivative (``torch.autograd.grad``), which FX cannot compute."""


class _ScriptedModule(Exception):
    """Forward calls a TorchScript module with parameters, which FX cannot see read."""

    def __init__(self, module: nn.Module, params: int) -> None:
        super().__init__("a TorchScript module")
        self.module, self.params = module, params


class _IterationError(torch.fx.proxy.TraceError):
    """Forward iterates over a traced value; remembers which node."""

    def __init__(self, node: torch.fx.Node) -> None:
        super().__init__("a traced value cannot be iterated")
        self.node = node


def _decorator(function: Any) -> str:
    """The decorator that made a wrapper: ``can_return_tuple`` for its ``<locals>.wrapper``."""
    code = getattr(function, "__code__", None)
    if code is None:
        return type(function).__name__
    return str(getattr(code, "co_qualname", code.co_name)).split(".<locals>")[0]


def _upstream_placeholders(node: torch.fx.Node) -> list[str]:
    """Names of the forward arguments a node's value is computed from."""
    seen: set[torch.fx.Node] = set()
    stack = [node]
    names: list[str] = []
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        if current.op == "placeholder":
            names.append(str(current.target).lstrip("*"))
        stack.extend(current.all_input_nodes)
    return sorted(names)


def trace(
    model: nn.Module,
    *,
    concrete_args: Mapping[str, Any] | None = None,
    target: str | None = None,
) -> Report:
    """Trace ``model.forward`` with torch.fx and report its execution order.

    Pure: nothing is printed and the model is not run (it may live on the
    meta device).

    Args:
        model: The module to trace.
        concrete_args: Values for forward arguments that must not be traced
            symbolically, e.g. flags that choose a branch.
        target: What to call the model in the report; its class name by default.

    Returns:
        The report: module order, parameter order and usage, unused parameters.

    Raises:
        ConcreteArgError: If a concrete argument is not an argument of forward.
        TraceFailure: If torch.fx cannot trace the forward; ``ControlFlowError``
            names the arguments a branch depends on.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"trace() expects an nn.Module, got {type(model).__name__}")
    args = dict(concrete_args or {})
    check_forward_args(model, list(args))
    recorder = Recorder(model)
    if recorder.tree.has_lazy_params:
        raise LazyModulesError(owner(model))
    tracer = _Tracer()
    with gc_paused():
        regions = _run_tracer(tracer, model, args, recorder)
        # Without a reentrant checkpoint every gradient comes in the one pass: none to count.
        passes: dict[nn.Parameter, set[Any]] | None = {} if regions.opened else None
        reach = output_reach(tracer.graph, model, passes)
        live = (
            live_params(tracer.graph, model, passes=passes)
            if reach is None
            else set().union(*(found for _, found in reach))
        )
        return build_report(
            recorder,
            target=target or type(model).__name__,
            mode=Mode.FX,
            concrete_args=args,
            live=live,
            outputs=reach,
            passes=passes,
            unrecomputed=never_recomputed(tracer.graph, model) if regions.opened else (),
        )


@contextmanager
def _constants_taken_back(model: nn.Module) -> Iterator[None]:
    """Take back the tensor constants torch.fx sets on ``model`` while it traces.

    FX stores each tensor forward computed outside the trace as an attribute
    of the root (``_tensor_constant0``, ...): left there, the user's model
    would keep it, with the autograd history it holds.
    """
    before = set(vars(model))
    try:
        yield
    finally:
        for name in [
            n for n in vars(model) if n not in before and n.startswith("_tensor_constant")
        ]:
            delattr(model, name)


def _regions(recorder: Recorder) -> Regions:
    """Checkpoint regions that tell ``recorder`` which of its calls are recomputed."""
    return Regions(recorder.checkpointed, lambda: len(recorder.calls), recorder.recomputed_since)


def _drew(recorder: Recorder, source: str, read: str, own: bool) -> None:
    """Forward made a choice from a value ``source`` drew at random (:mod:`.draws`)."""
    where = "" if read == MOVED else user_site()
    recorder.assume(Assumed(source, where, AssumptionKind.DRAWN, own))


def _run_tracer(
    tracer: _Tracer, model: nn.Module, args: dict[str, Any], recorder: Recorder
) -> Regions:
    """Trace ``model`` into ``recorder``; FX's errors become :class:`TraceFailure`.

    Returns:
        The reentrant checkpoint regions the trace went through.
    """
    writes: list[tuple[int, list[torch.fx.Node]]] = []
    try:
        named = list(model.named_modules())
        with (
            _constants_taken_back(model),
            regions_traced(_regions(recorder)) as regions,
            functions_traced(regions, recorder) as unseen,
            record_tracer(tracer, model, recorder, regions=regions, writes=writes),
            user_code(f"tracing {owner(model)}"),
            watching_draws(
                functools.partial(_drew, recorder),
                generators=generators_of(named),
                packages=packages_of(named),
            ),
        ):
            tracer.trace(model, args or None)
        needs = needs_grad(tracer.graph, model) if unseen or writes else {}
        # FSDP2 copies an argument holding a tensor that needs grad: one a parameter reaches.
        recorder.input_writes = [
            i for i, nodes in writes if any(needs.get(node, False) for node in nodes)
        ]
        if unseen:  # a Function none of whose inputs needs grad: its backward never runs
            recorder.unseen_backwards = [
                told
                for told, call in zip(recorder.unseen_backwards, unseen, strict=True)
                if any(needs.get(node, False) for node in call.inputs)
            ]
        return regions
    except UserExitError:
        raise
    except RecursionError as exc:
        depth = recorder.tree.depth
        if depth < DEEP:
            raise TraceFailure(owner(model), first_line(exc)) from exc
        raise TooDeepError(owner(model), depth, sys.getrecursionlimit(), running=False) from exc
    except _ControlFlowError as exc:
        names = _upstream_placeholders(exc.node)
        direct = len(names) == 1 and exc.node.op == "placeholder"
        raise ControlFlowError(owner(model), names, direct=direct) from exc
    except _IterationError as exc:
        raise IterationError(owner(model), exc.node.name) from exc
    except _Differentiates as exc:
        raise DifferentiatesError(owner(model)) from exc
    except _ScriptedModule as exc:
        name = recorder.tree.module_names[id(exc.module)][0]
        raise ScriptedModuleError(owner(model), name, exc.params) from None
    except Exception as exc:
        forward = type(model).forward
        if isinstance(exc, ValueError) and hasattr(forward, "__wrapped__"):
            # FX patches the wrapper's code with the wrapped function's arguments.
            raise WrappedForwardError(owner(model), _decorator(forward)) from exc
        raise TraceFailure(owner(model), first_line(exc)) from exc
