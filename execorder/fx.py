"""The FX backend: record execution order while ``torch.fx`` traces a forward.

The tracer's ``call_module`` (every submodule call) and ``create_proxy``
(every op, and every leaf-module call) are patched to report to a
:class:`~execorder.recorder.Recorder`; ``create_node`` is patched to see the
output node, so a parameter returned as-is counts as used.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.fx
from torch import nn

from execorder.errors import ConcreteArgError, TraceFailure
from execorder.recorder import Recorder
from execorder.report import Report

_OP_KINDS = frozenset({"call_function", "call_method"})


def _leaves(value: Any) -> Iterator[Any]:
    """Every non-container value inside nested lists, tuples, dicts and slices."""
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from _leaves(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, slice):
        yield from _leaves((value.start, value.stop, value.step))
    else:
        yield value


class _ParamFinder:
    """Finds the parameters an op reads among its (nested) args and kwargs.

    Only real attribute reads count: a proxy counts when its node is a
    ``get_attr`` of a parameter, never a placeholder that shares the name.
    """

    def __init__(self, root: nn.Module) -> None:
        self.by_name: dict[str, nn.Parameter] = dict(root.named_parameters())
        self._ids = {id(p) for p in self.by_name.values()}

    def node_param(self, node: torch.fx.Node) -> nn.Parameter | None:
        if node.op == "get_attr" and isinstance(node.target, str):
            return self.by_name.get(node.target)
        return None

    def find(self, *values: Any) -> list[nn.Parameter]:
        found = []
        for leaf in _leaves(values):
            if isinstance(leaf, torch.fx.Proxy):
                param = self.node_param(leaf.node)
                if param is not None:
                    found.append(param)
            elif isinstance(leaf, torch.fx.Node):
                param = self.node_param(leaf)
                if param is not None:
                    found.append(param)
            elif isinstance(leaf, nn.Parameter) and id(leaf) in self._ids:
                found.append(leaf)
        return found


@contextmanager
def record_tracer(
    tracer: torch.fx.Tracer, root_module: nn.Module, recorder: Recorder
) -> Iterator[Recorder]:
    """Patch ``tracer`` so that tracing ``root_module`` reports to ``recorder``.

    Works on any ``torch.fx.Tracer``, a user's subclass included. The patched
    methods are restored on exit, also when tracing raises.

    Args:
        tracer: The tracer instance to patch.
        root_module: The module that will be traced.
        recorder: Receives the events.

    Yields:
        The recorder.
    """
    finder = _ParamFinder(root_module)
    orig_call_module = tracer.call_module
    orig_create_proxy = tracer.create_proxy
    orig_create_node = tracer.create_node

    def call_module(
        module: nn.Module,
        forward: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        recorder.enter(module)
        output = orig_call_module(module, forward, args, kwargs)
        recorder.exit(module)
        return output

    # The signature names proxy_factory_fn on purpose: torch.fx inspects it to
    # decide whether to pass one (for param_shapes_constant).
    def create_proxy(
        kind: str,
        target: torch.fx.node.Target,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        name: str | None = None,
        type_expr: Any | None = None,
        proxy_factory_fn: Callable[[torch.fx.Node], torch.fx.Proxy] | None = None,
    ) -> torch.fx.Proxy:
        proxy = orig_create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        if kind in _OP_KINDS:
            recorder.use(finder.find(args, kwargs))
        elif kind == "call_module":
            # The caller evaluated the arguments; the leaf uses all its own
            # parameters, which FX cannot see into.
            recorder.use(finder.find(args, kwargs), outer=1)
            recorder.use_module()
        return proxy

    def create_node(kind: str, target: Any, args: Any, kwargs: Any, *rest: Any, **kw: Any) -> Any:
        if kind == "output":
            recorder.use(finder.find(args, kwargs))
        return orig_create_node(kind, target, args, kwargs, *rest, **kw)

    tracer.call_module = call_module  # type: ignore[method-assign]
    tracer.create_proxy = create_proxy  # type: ignore[method-assign]
    tracer.create_node = create_node  # type: ignore[method-assign]
    try:
        yield recorder
    finally:
        tracer.call_module = orig_call_module  # type: ignore[method-assign]
        tracer.create_proxy = orig_create_proxy  # type: ignore[method-assign]
        tracer.create_node = orig_create_node  # type: ignore[method-assign]


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
        raise _ControlFlowError(obj.node)


class _ControlFlowError(torch.fx.proxy.TraceError):
    """Control flow depends on a traced value; remembers which node."""

    def __init__(self, node: torch.fx.Node) -> None:
        super().__init__("symbolically traced variables cannot be used as inputs to control flow")
        self.node = node


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


def _control_flow_message(exc: _ControlFlowError, owner: str) -> str:
    names = _upstream_placeholders(exc.node)
    prefix = f"While tracing {owner}: control flow depends on"
    if len(names) == 1 and exc.node.op == "placeholder":
        return f"{prefix} argument '{names[0]}'; pin it with --concrete {names[0]}=VALUE"
    if len(names) == 1:
        return (
            f"{prefix} a value computed from argument '{names[0]}'. If it is a flag or "
            f"option, pin it with --concrete {names[0]}=VALUE; FX cannot trace branches "
            "on tensor values"
        )
    if names:
        listed = ", ".join(f"'{n}'" for n in names)
        return f"{prefix} arguments {listed}; pin the flags among them with --concrete NAME=VALUE"
    return f"{prefix} a traced value; pin the arguments it needs with --concrete NAME=VALUE"


def check_concrete_args(model: nn.Module, concrete_args: Mapping[str, Any]) -> None:
    """Check that every concrete argument names a parameter of ``model.forward``.

    Raises:
        ConcreteArgError: Naming the unknown argument and the valid names.
    """
    try:
        signature = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return
    params = signature.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    valid = [p.name for p in params if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    for name in concrete_args:
        if name not in valid:
            listed = ", ".join(valid) if valid else "(none)"
            raise ConcreteArgError(
                f"{type(model).__name__}.forward has no argument {name!r}; "
                f"its arguments are: {listed}"
            )


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
        TraceFailure: If torch.fx cannot trace the forward.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"trace() expects an nn.Module, got {type(model).__name__}")
    args = dict(concrete_args or {})
    check_concrete_args(model, args)
    owner = f"{type(model).__name__}.forward"
    recorder = Recorder(model)
    tracer = _Tracer()
    try:
        with record_tracer(tracer, model, recorder):
            tracer.trace(model, args or None)
    except _ControlFlowError as exc:
        raise TraceFailure(_control_flow_message(exc, owner)) from exc
    except Exception as exc:
        raise TraceFailure(f"While tracing {owner}: {type(exc).__name__}: {exc}") from exc
    return recorder.build_report(
        target=target or type(model).__name__, mode="fx", concrete_args=args
    )
