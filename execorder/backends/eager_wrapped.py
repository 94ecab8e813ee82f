"""What :func:`~execorder.backends.eager.record` accepts: wrapped models, compiled ones, DDP."""

from __future__ import annotations

import os
import sys
from collections.abc import Collection, Sequence
from contextlib import nullcontext
from typing import Any, NamedTuple

import torch
from torch import nn

from execorder.backends.common import map_tensors
from execorder.errors import RecordingError
from execorder.recording import ModuleTree, class_name, ddp_registered, unwrap
from execorder.report import DdpBuilt


def check_recordable(model: nn.Module, root: nn.Module, tree: ModuleTree) -> None:
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
    if getattr(torch.compiler, "set_stance", None) is None and compiled(model, tree):
        raise RecordingError(
            f"{name} is compiled (torch.compile), and this torch cannot run it eagerly for "
            "the recording (torch.compiler.set_stance needs torch 2.6 or newer); "
            "record the model uncompiled"
        )


def compiled(model: nn.Module, tree: ModuleTree) -> bool:
    """Whether ``model``, the wrappers it is made of around ``tree``'s root, or any module of
    ``tree`` runs compiled code (``torch.compile``, ``.compile()``); no recursion, so a model
    nested deeper than Python's limit is answered too."""
    optimized = getattr(sys.modules.get("torch._dynamo.eval_frame"), "OptimizedModule", None)

    def runs_compiled(module: nn.Module) -> bool:
        return getattr(module, "_compiled_call_impl", None) is not None or (
            optimized is not None and isinstance(module, optimized)
        )

    root, wrapper = tree.modules[0], model
    while wrapper is not root:
        if runs_compiled(wrapper):
            return True
        inner = [m for m in wrapper._modules.values() if m is not None]
        if len(inner) != 1:
            break
        wrapper = inner[0]
    return any(runs_compiled(module) for module in tree.modules)


def fsdp_units(tree: ModuleTree) -> bool:
    """Whether any module of ``tree`` is a unit of FSDP2 (``fully_shard``)."""
    fsdp = sys.modules.get("torch.distributed.fsdp._fully_shard._fully_shard")
    unit = getattr(fsdp, "FSDPModule", None)
    return unit is not None and any(isinstance(m, unit) for m in tree.modules)


def fsdp_managed(tree: ModuleTree) -> set[int]:
    """The ids of the parameters FSDP2 shards (or replicates) in ``tree``: autograd never
    accumulates into them, since forward reads the unsharded ones FSDP2 puts in their place;
    FSDP2 runs their post-accumulate-grad hooks itself, for each gradient it reduces."""
    managed: set[int] = set()
    for module in tree.modules:
        state = getattr(module, "_get_fsdp_state", None)
        if state is None:
            continue
        try:
            for group in state()._fsdp_param_groups:
                managed.update(id(param.sharded_param) for param in group.fsdp_params)
        except AttributeError:
            continue
    return managed


def compiled_around() -> bool:
    """Whether compiled code (a ``torch.compile``'d module or function) is running the caller
    now, eagerly under :func:`uncompiled` (read off the stack)."""
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        # What torch.compile wraps a function or a module's call in (torch._dynamo.disable's
        # wrapper, in the same file, is another, which FSDP2 and DDP run their hooks in).
        if code.co_name == "compile_wrapper" and code.co_filename.endswith(_EVAL_FRAME):
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


_EVAL_FRAME = "_dynamo/eval_frame.py".replace("/", os.sep)


class _Ready(torch.autograd.Function):
    """The identity on a tensor whose backward reaches the accumulators of ``params`` with no
    gradient: DDP counts them ready, as it does when compiled code holds them."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, *params: nn.Parameter) -> torch.Tensor:
        ctx.count = len(params)
        # Not a view (an in-place op on a custom Function's view output raises): the same
        # storage and version counter, so the caller's in-place ops fare as without it.
        return tensor.detach()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        return (grad, *(None,) * ctx.count)


def readied(outputs: Any, params: Sequence[nn.Parameter]) -> tuple[Any, bool]:
    """``outputs`` with each tensor that carries a gradient made to ready ``params`` for DDP
    in backward (:class:`_Ready`); whether any did (wherever :func:`map_tensors` finds them:
    in pytree's containers, dataclasses and other objects of the model's own).

    A step recorded eagerly inside a compiled job builds eager's autograd graph,
    in which a parameter compiled code reads but gives no gradient (read under
    ``no_grad``, detached) has no accumulator; the compiled graph holds it as an
    input, and DDP with ``find_unused_parameters=False`` waits for it: without
    this, the step after the recording fails ("Expected to have finished
    reduction in the prior iteration").
    """
    done = False

    def ready(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal done
        if not tensor.requires_grad:
            return tensor
        done = True
        return _Ready.apply(tensor, *params)

    return map_tensors(outputs, ready), done


def uncompiled() -> Any:
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


class DdpAround(NamedTuple):
    """The DDP whose forward runs the recorded model: its settings, the parameters it
    registers when it ignores some (None: every trainable one), what it registered when
    built, where other parameters required grad then (None: the same), whether it passes
    the model's outputs through its ``_DDPSink`` (searching for unused parameters, or
    building its static graph), whether its backward reduces gradients (not under
    ``no_sync()``), the process group over which it averages this step's gradients
    into one that every rank shares (None: not in this step, :func:`_reduces`), and the
    DDP itself (:func:`reduction_finished`)."""

    settings: DdpSettings
    registered: list[nn.Parameter] | None
    built: DdpBuilt | None
    sinks: bool
    syncs: bool  # its backward reduces (not under no_sync())
    reduces: Any  # the process group it all-reduces this step's gradients over, or None
    wrapper: Any


def _built(
    wrapper: Any, registered: list[nn.Parameter] | None, trainable: Collection[int]
) -> DdpBuilt | None:
    """What ``wrapper`` registered when built (its own count, from its logging data), where
    that is not what it would register now (``trainable``: the ids of the parameters that
    required grad before forward); None when the same, or not told."""
    try:
        data = wrapper._get_ddp_logging_data()
        then = (int(data["num_parameter_tensors"]), int(data["total_parameter_size_bytes"]))
    except Exception:
        return None
    params = ddp_registered(wrapper.module, ()) if registered is None else registered
    now = [p for p in params if id(p) in trainable]
    count = (len(now), sum(p.numel() * p.element_size() for p in now))
    return None if count == then else DdpBuilt(*then, *count)


def ddp_around(model: nn.Module, trainable: Collection[int]) -> DdpAround | None:
    """The DDP that runs ``model``, read once its call has returned (inside it): one whose
    forward is on the stack, or the one torch's composable ``replicate`` (the DDP of
    OLMo-core's and torchtitan's earlier ``apply_ddp``) made for ``model`` and runs from its
    hooks. ``trainable``: the ids of the parameters that required grad before forward."""
    wrapper = _ddp_on_stack(model)
    registered = None
    if wrapper is None:
        wrapper = _replicated(model)
        if wrapper is None:
            return None
        registered = ddp_registered(wrapper.module, ())  # its own list of the model's
    settings = _settings(wrapper)
    # Its own set: the model's _ddp_params_and_buffers_to_ignore, and any
    # delay_all_reduce_named_params (all-reduced apart, after backward).
    ignored = getattr(wrapper, "parameters_to_ignore", None)
    if ignored:
        registered = ddp_registered(wrapper.module, ignored)
    # As DDP's _post_forward decides.
    static = settings.static_graph
    sinks = (settings.find_unused_parameters and not static) or (
        static and not getattr(wrapper, "_static_graph_delay_allreduce_enqueued", True)
    )
    built = _built(wrapper, registered, trainable)
    syncs = bool(getattr(wrapper, "require_backward_grad_sync", True))
    return DdpAround(settings, registered, built, sinks, syncs, _reduces(wrapper), wrapper)


def reduction_finished(wrapper: Any) -> bool:
    """Whether a DDP whose backward has run finished reducing its gradients, by DDP's own
    check (``_check_reducer_finalized``: what its next forward raises on, "Expected to have
    finished reduction in the prior iteration"). Where it did not, its all-reduces stopped
    part-way on this rank: a gradient it waits for did not come. True where DDP cannot tell."""
    check = getattr(getattr(wrapper, "reducer", None), "_check_reducer_finalized", None)
    if check is None:
        return True
    try:
        check()
    except RuntimeError:
        return False
    return True


def _settings(wrapper: Any) -> DdpSettings:
    return DdpSettings(
        bool(wrapper.find_unused_parameters), bool(getattr(wrapper, "static_graph", False))
    )


DEFAULT_HOOKS = "torch.distributed.algorithms.ddp_comm_hooks.default_hooks"


def _reduces(wrapper: Any) -> Any:
    """The process group over which ``wrapper`` averages this step's gradients into one every
    rank shares: None under ``no_sync()``, or with a comm hook other than torch's own
    all-reduces (local SGD's reduces within subgroups, by design)."""
    if not getattr(wrapper, "require_backward_grad_sync", True):
        return None
    for hook, _ in getattr(wrapper, "_comm_hooks", None) or ():
        if getattr(hook, "__module__", None) != DEFAULT_HOOKS:
            return None
    return getattr(wrapper, "process_group", None)


def _ddp_on_stack(model: nn.Module) -> Any:
    """The ``DistributedDataParallel`` whose forward runs ``model`` now (read off the stack)."""
    ddp = getattr(sys.modules.get("torch.nn.parallel.distributed"), "DistributedDataParallel", None)
    if ddp is None:
        return None
    codes = {f.__code__ for f in (ddp.forward, ddp._run_ddp_forward) if hasattr(f, "__code__")}
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code in codes:
            wrapper = frame.f_locals.get("self")
            if isinstance(wrapper, ddp) and unwrap(wrapper) is model:
                return wrapper
        frame = frame.f_back  # type: ignore[assignment]
    return None


def _replicate_state(model: nn.Module) -> Any:
    """What ``replicate(model)`` (torch's composable DDP) keeps on the model; None without.

    Not the ``replicate`` of ``torch.distributed._composable.replicate_with_fsdp``, whose
    state has the same name: that one is FSDP2 (its units are ``FSDPModule``), and read so.
    """
    # Where torch's composable APIs keep their states on a module (by the API applied).
    key = getattr(sys.modules.get("torch.distributed._composable.contract"), "STATE_KEY", None)
    states = model.__dict__.get(key, {}) if isinstance(key, str) else {}
    for state in states.values() if isinstance(states, dict) else ():
        if type(state).__module__ == _DDP_REPLICATE and type(state).__name__ == "_ReplicateState":
            return state
    return None


_DDP_REPLICATE = "torch.distributed._composable.replicate"


def _replicated(model: nn.Module) -> Any:
    """The ``DistributedDataParallel`` that ``replicate(model)`` made (over a list of the
    model's parameters), once its first forward has made it; None without one."""
    return getattr(_replicate_state(model), "_ddp", None)


def replicate_ready(tree: ModuleTree) -> None:
    """Make the DDPs ``replicate()`` makes in the first call of each module it was applied
    to (the model, or modules inside it), as its hooks would there and then: building one
    broadcasts its parameters, which is not forward's use. In the tree's order, the same on
    every rank."""
    if _DDP_REPLICATE not in sys.modules:
        return
    for module in tree.modules:
        state = _replicate_state(module)
        if state is not None and (state._init_args or state._init_kwargs):  # as its hook checks
            state.lazy_init()


class DdpInside(NamedTuple):
    """A DDP that runs a module inside the recorded model (``DDP(model.encoder)`` put in
    its place, or ``replicate(model.encoder)``): the module's name, the DDP's settings, the
    trainable parameters it registers, by name, in the order it numbers them, and the
    process group over which it averages this step's gradients (None: not in this step,
    as :class:`DdpAround`'s ``reduces``), and the DDP itself."""

    name: str
    settings: DdpSettings
    registered: tuple[str, ...]
    reduces: Any = None
    wrapper: Any = None

    @property
    def sinks(self) -> bool:
        """Whether it passes its module's outputs through its ``_DDPSink`` (searching for
        unused parameters, or with a static graph)."""
        return self.settings.find_unused_parameters or self.settings.static_graph


def ddps_inside(model: nn.Module, tree: ModuleTree, trainable: Collection[int]) -> list[DdpInside]:
    """The DDPs that run modules inside ``model`` (not one that runs ``model`` itself: see
    :func:`ddp_around`). ``trainable``: the ids of the parameters that required grad before
    forward, of which DDP registers those it was built with."""
    ddp = getattr(sys.modules.get("torch.nn.parallel.distributed"), "DistributedDataParallel", None)
    if ddp is None:
        return []
    found = []
    stack, seen = [model], set()
    while stack:
        module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        wrapper = module if isinstance(module, ddp) else None
        if wrapper is None and module is not model:
            wrapper = _replicated(module)
        inner = unwrap(module)
        if wrapper is not None and id(inner) in tree.module_names:
            ignored = getattr(wrapper, "parameters_to_ignore", None) or ()
            params = ddp_registered(wrapper.module, ignored)
            names = tuple(
                tree.param_names[id(p)][0]
                for p in params
                if id(p) in trainable and id(p) in tree.param_names
            )
            name = tree.module_names[id(inner)][0]
            found.append(DdpInside(name, _settings(wrapper), names, _reduces(wrapper), wrapper))
        stack.extend(reversed([m for m in module._modules.values() if m is not None]))
    return found
