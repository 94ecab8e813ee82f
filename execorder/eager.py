"""The eager backend: run forward for real and record what runs.

For the duration of the run each module of the model gets a wrapper around
its ``_call_impl`` that logs the call, and each parameter is re-classed to a
private subclass of ``nn.Parameter`` whose ``__torch_function__`` logs the
op's parameters. torch only calls into Python for ops that actually receive
one of them (as an argument, keyword or inside a list), so ops on activations
cost nothing extra. The parameter objects stay the same, so identity, tying
and autograd are unaffected; wrappers and classes are removed afterwards,
also when forward raises. The hot path only appends to a list, which the
:class:`~execorder.recorder.Recorder` replays afterwards: both backends feed
it, so an eager report has the same shape as an FX one (``mode`` is
``"eager"``)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from execorder.errors import TraceFailure
from execorder.recorder import ModuleTree, Recorder, check_forward_args, gc_paused, module_tree
from execorder.report import Report


class MetaDeviceError(TraceFailure):
    """Forward failed on the meta device (it needs real tensor values)."""


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor inside nested tuples, lists, dicts (a ModelOutput too)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _tensors(item)


Event = nn.Module | list[nn.Parameter] | None


@contextmanager
def _recording(root: nn.Module, tree: ModuleTree, events: list[Event]) -> Iterator[None]:
    """Log what runs inside ``root`` to ``events``, in the form :meth:`Recorder.replay` reads.

    A call of one of ``root``'s modules logs the module, then ``None`` when it
    returns (or raises). An op that receives some of ``root``'s parameters
    logs the list of them. The root's own call logs nothing: it is the
    recorder's first.

    Each module's ``_call_impl`` (what ``module(...)`` runs, hooks included) is
    wrapped on the instance: no global hooks, which would send every call
    through torch's slow path, and no patched class, which would invalidate
    Python's type caches. Parameters are re-classed for the duration, so
    torch calls back for ops that read them.
    """
    append = events.append
    run_disabled = torch._C._disabled_torch_function_impl

    def torch_function(
        cls: type, func: Callable[..., Any], types: Any, args: Any = (), kwargs: Any = None
    ) -> Any:
        used = []
        for value in (*args, *kwargs.values()) if kwargs else args:
            kind = type(value)
            if kind is cls:
                used.append(value)
            elif kind is list or kind is tuple:
                used += [v for v in value if type(v) is cls]
        append(used)
        # As nn.Parameter itself does: results are plain tensors.
        return run_disabled(func, types, args, kwargs or {})

    recording = type(
        "RecordingParameter", (nn.Parameter,), {"__torch_function__": classmethod(torch_function)}
    )
    originals = {id(p): type(p) for p in tree.params}

    def wrap(module: nn.Module, call: Callable[..., Any]) -> Callable[..., Any]:
        def recorded(*args: Any, **kwargs: Any) -> Any:
            append(module)
            try:
                return call(*args, **kwargs)
            finally:
                append(None)

        return recorded

    modules = [m for m in tree.modules if m is not root]
    # Wrap what _wrapped_call_impl runs: the compiled call if there is one.
    slots = [
        "_call_impl" if getattr(m, "_compiled_call_impl", None) is None else "_compiled_call_impl"
        for m in modules
    ]
    saved = [m.__dict__.get(slot, _ABSENT) for m, slot in zip(modules, slots, strict=True)]
    try:
        for module, slot in zip(modules, slots, strict=True):
            module.__dict__[slot] = wrap(module, getattr(module, slot))
        for param in tree.params:
            param.__class__ = recording
        yield
    finally:
        for module, slot, before in zip(modules, slots, saved, strict=True):
            if before is _ABSENT:
                module.__dict__.pop(slot, None)
            else:
                module.__dict__[slot] = before
        for param in tree.params:
            param.__class__ = originals[id(param)]


_ABSENT = object()


def live_params(outputs: Any, params: Sequence[nn.Parameter]) -> set[nn.Parameter]:
    """Those of ``params`` whose gradient accumulators the outputs' autograd graph reaches.

    Nothing is computed: the graph is walked, not run.
    """
    own = {id(p): p for p in params}
    live: set[nn.Parameter] = set()
    seen: set[Any] = set()
    stack: list[Any] = []
    for tensor in _tensors(outputs):
        if tensor.grad_fn is not None:
            stack.append(tensor.grad_fn)
        elif id(tensor) in own and tensor.requires_grad:
            live.add(own[id(tensor)])  # a parameter returned as it is
    while stack:
        fn = stack.pop()
        if fn in seen:
            continue
        seen.add(fn)
        variable = getattr(fn, "variable", None)
        if variable is not None and id(variable) in own:
            live.add(own[id(variable)])
        stack.extend(next_fn for next_fn, _ in fn.next_functions if next_fn is not None)
    return live


def backward_order(outputs: Any, params: Sequence[nn.Parameter]) -> list[nn.Parameter]:
    """Run backward on the sum of the outputs; the order ``params``' gradients are accumulated.

    That is the order DDP's reducer and FSDP's backward prefetching see.
    """
    losses = [t.float().sum() for t in _tensors(outputs) if t.requires_grad]
    order: list[nn.Parameter] = []
    if not losses:
        return order
    with _accumulation_hooks([p for p in params if p.requires_grad], order.append):
        loss = losses[0] if len(losses) == 1 else torch.stack(losses).sum()
        loss.backward()
    return order


@contextmanager
def _accumulation_hooks(
    params: Sequence[nn.Parameter], hook: Callable[[nn.Parameter], None]
) -> Iterator[None]:
    """``hook`` as a post-accumulate-grad hook of each of ``params``, for the context.

    Written straight into each tensor's hook dict, as
    ``Tensor.register_post_accumulate_grad_hook`` does, without its handle
    objects: about 9x cheaper, and on a GPU this runs while the device waits.
    Removed the way a handle removes it: the key leaves the dict.
    """
    key = object()
    hook_dicts = []
    try:
        for param in params:
            hooks = param._post_accumulate_grad_hooks
            if hooks is None:
                param._post_accumulate_grad_hooks = hooks = OrderedDict()
            hooks[key] = hook
            hook_dicts.append(hooks)
        yield
    finally:
        for hooks in hook_dicts:
            hooks.pop(key, None)


def _on_meta(model: nn.Module, args: Sequence[Any], kwargs: Mapping[str, Any]) -> bool:
    tensors = [*model.parameters(), *model.buffers(), *_tensors(list(args)), *_tensors(kwargs)]
    return any(t.is_meta for t in tensors)


def trace(
    model: nn.Module,
    *,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    backward: bool = False,
    target: str | None = None,
    inputs: Mapping[str, str] | None = None,
) -> Report:
    """Run ``model(*args, **kwargs)`` for real and report its execution order.

    Pure: nothing is printed. On the meta device nothing is computed either,
    only shapes.

    Args:
        model: The module to run.
        args: Positional arguments of forward.
        kwargs: Keyword arguments of forward (inputs and concrete values).
        backward: Also run backward on the sum of the outputs and record the
            order in which parameters' gradients are accumulated.
        target: What to call the model in the report; its class name by default.
        inputs: Descriptions of the input tensors for the report; by default
            those of the tensor arguments.

    Returns:
        The report, with ``mode`` ``"eager"``.

    Raises:
        ConcreteArgError: If a keyword is not an argument of forward.
        MetaDeviceError: If forward needs real values and the model or the
            inputs are on the meta device.
        TraceFailure: If forward raises otherwise.
    """
    with gc_paused():
        return _run(model, args, dict(kwargs or {}), backward, target, inputs)


def _run(
    model: nn.Module,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    backward: bool,
    target: str | None,
    inputs: Mapping[str, str] | None,
) -> Report:
    """:func:`trace`, with the garbage collector paused by the caller."""
    owner = f"{type(model).__name__}.forward"
    tree = module_tree(model)
    if tree.has_lazy_params:
        # Lazy modules (nn.LazyLinear, ...) create their parameters in their
        # first forward: run it once unrecorded, then record a real one.
        try:
            with torch.no_grad():
                model(*args, **kwargs)
        except Exception as exc:
            raise TraceFailure(f"While initializing the lazy modules of {owner}: {exc}") from exc
        tree = module_tree(model)
    params = tree.params
    events: list[Event] = []
    try:
        with _recording(model, tree, events), torch.enable_grad():
            outputs = model(*args, **kwargs)
    except Exception as exc:
        check_forward_args(model, list(kwargs))  # a clearer error for a wrong keyword
        reason = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
        if _on_meta(model, args, kwargs):
            raise MetaDeviceError(
                f"While running {owner} on the meta device: {reason}. Its forward needs "
                "real tensor values (data-dependent control flow or indexing); use --device cpu"
            ) from exc
        raise TraceFailure(f"While running {owner}: {reason}") from exc
    # Launch backward first: on a GPU the bookkeeping below then runs while
    # the device works through the queued kernels.
    order = backward_order(outputs, params) if backward else None
    recorder = Recorder(model, tree)
    recorder.replay(events)
    # A parameter returned as it is counts as used by the root.
    own = {id(p) for p in params}
    recorder.use([t for t in _tensors(outputs) if id(t) in own])  # type: ignore[misc]
    # A backward already says which parameters got a gradient: no graph walk.
    live = set(order) if order is not None else live_params(outputs, params)
    return recorder.build_report(
        target=target or type(model).__name__,
        mode="eager",
        concrete_args={k: v for k, v in kwargs.items() if not isinstance(v, torch.Tensor)},
        live=live,
        backward=order,
        inputs=inputs if inputs is not None else _describe(args, kwargs),
    )


def _describe(args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, str]:
    from execorder.inputs import describe

    described = {f"arg{i}": describe(a) for i, a in enumerate(args) if isinstance(a, torch.Tensor)}
    described |= {k: describe(v) for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
    return described
