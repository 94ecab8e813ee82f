"""What a training step holds in memory, measured from the step itself, on meta as on a device.

:func:`measure` runs two training steps (forward, a backward of the summed
outputs, the optimizer's step, its gradients set to None) under
:class:`MemoryRun`, a dispatch mode that sees every tensor an op makes. Each
new storage counts from the op that made it until the last reference to it
goes (a weak reference's callback, as PyTorch's ``MemTracker`` does), so
what is alive is what the real step holds: on meta the same references live
as long as on a device, only without their values. Each storage is one kind
(:class:`~execorder.report.memory.MemoryKind`): the model's parameters and
buffers; the parameters' gradients (once accumulated); what the optimizer
makes in its step; what autograd saves in forward for backward
(``saved_tensors_hooks``); the rest is temporary. What a dispatch mode sees
otherwise than a device does is counted as on a device: backward's sum of two
gradients of one input and its formulas' writes into zeros they made (in place
on a device, out of place under any dispatch mode and on meta:
:meth:`MemoryRun._in_place`), and a matmul's copy of a broadcast operand, made
inside its kernel (:func:`_copied_inside`).

Bytes are storage bytes (``nbytes``): a device's allocator rounds each block
up (512 bytes on CUDA) and may fragment, which this does not model.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from execorder.backends.meta import MetaRun
from execorder.backends.stand_ins import meta_stand_ins
from execorder.report.memory import Memory, MemoryKind, MemoryPoint, Phase

OPTIMIZERS = ("adamw", "sgd", "none")


class MemoryRun(TorchDispatchMode):
    """Bytes alive, by kind, as ops make storages and references to them go.

    Attributes:
        phase: The phase running now (set by the step).
        call: The module call running now (set by the step's hooks).
        peak: The most bytes alive so far, and when, and by kind then.
    """

    def __init__(self) -> None:
        super().__init__()
        self.phase = Phase.FORWARD
        self.call: int | None = None
        self.calls = 0  # module calls started in this step's forward
        self.alive: dict[MemoryKind, int] = dict.fromkeys(MemoryKind, 0)
        self.total = 0
        self._kinds: dict[int, tuple[MemoryKind, int]] = {}  # storage -> kind, bytes
        self._refs: dict[int, Any] = {}
        self.between_nodes = False  # in backward, between two autograd nodes' work
        self.in_formula = False  # in backward, inside a built-in node's work
        self._fresh: set[int] = set()  # storages the node running now made
        self._replacing: int | None = None  # see _in_place
        self.peak: tuple[int, MemoryPoint, dict[MemoryKind, int]] = (
            0,
            MemoryPoint(Phase.FORWARD, None, 0),
            dict(self.alive),
        )

    # -- storages -------------------------------------------------------------

    def track(
        self, tensor: torch.Tensor, kind: MemoryKind, *, retag: bool = False, sample: bool = True
    ) -> None:
        """Count ``tensor``'s storage as ``kind`` (``retag``: also if counted already;
        ``sample``: see if that makes a peak now)."""
        if sample:
            self.settle()
        local = getattr(tensor, "_local_tensor", None)  # a DTensor holds its shard
        if isinstance(local, torch.Tensor):
            tensor = local
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return  # a tensor without a storage of its own (a subclass, a sparse one)
        key = storage._cdata
        known = self._kinds.get(key)
        if known is not None:
            if retag and known[0] is not kind:
                self.alive[known[0]] -= known[1]
                self.alive[kind] += known[1]
                self._kinds[key] = (kind, known[1])
            return
        size = storage.nbytes()
        self._kinds[key] = (kind, size)
        self._refs[key] = weakref.ref(storage, functools.partial(self._freed, key))
        self.alive[kind] += size
        self.total += size
        if self.in_formula:
            self._fresh.add(key)
        if sample:
            self._sample()

    def resized(self, storage: Any) -> None:
        """A storage resized in place (FSDP2 frees and refills gathered parameters so)."""
        self.settle()
        key = storage._cdata
        size = storage.nbytes()
        known = self._kinds.get(key)
        if known is None:
            if not size:
                return
            self._refs[key] = weakref.ref(storage, functools.partial(self._freed, key))
            known = (MemoryKind.GATHERED, 0)
        kind = MemoryKind.GATHERED if known[1] == 0 and size else known[0]
        self._kinds[key] = (kind, size)
        self.alive[known[0]] -= known[1]
        self.alive[kind] += size
        self.total += size - known[1]
        self._sample()

    def _freed(self, key: int, _: Any = None) -> None:
        if self._replacing == key:
            self._replacing = None  # accumulated in place: never both alive
        else:
            self.settle()
        kind, size = self._kinds.pop(key, (None, 0))
        self._refs.pop(key, None)
        self._fresh.discard(key)
        if kind is not None:
            self.alive[kind] -= size
            self.total -= size

    def _sample(self) -> None:
        if self.total > self.peak[0]:
            self.peak = (self.total, self.point(), dict(self.alive))

    def settle(self) -> None:
        """An op counted as in place whose first operand outlived it was not: sample it."""
        if self._replacing is not None:
            self._replacing = None
            self._sample()

    def in_backward(self, *, between_nodes: bool, in_formula: bool = False) -> None:
        """Backward is now between two nodes' work, or in a node's (``in_formula``: a
        built-in one's), or done with both."""
        self.settle()
        self.between_nodes, self.in_formula = between_nodes, in_formula
        self._fresh.clear()

    def point(self) -> MemoryPoint:
        return MemoryPoint(self.phase, self.call, self.total)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.settle()
        out = func(*args, **(kwargs or {}))
        if self._in_place(func, args, kwargs, out):
            return out
        kind = MemoryKind.OPTIMIZER if self.phase is Phase.OPTIMIZER else MemoryKind.TEMPORARIES
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.track(leaf, kind)
        copied = _copied_inside(func, args)
        if copied:
            self._briefly(copied)
        return out

    def _briefly(self, size: int) -> None:
        """``size`` bytes a kernel held inside itself, alive with its output until it
        returned: sampled with them, then gone."""
        self.alive[MemoryKind.TEMPORARIES] += size
        self.total += size
        self._sample()
        self.alive[MemoryKind.TEMPORARIES] -= size
        self.total -= size

    def _in_place(self, func: Any, args: Any, kwargs: Any, out: Any) -> bool:
        """Whether backward ran ``func`` out of place only because a dispatch mode watches it,
        where a device writes into its first operand; if so, ``out`` is counted as
        replacing that operand.

        Under any dispatch mode (this one, ``MemTracker``'s), and on meta, every tensor is
        "subclass-like", and autograd then takes the out-of-place path a subclass needs:
        the engine sums two gradients of one input out of place (``InputBuffer::accumulate``;
        Marian's shared embedding came out 406 KB over the allocator's record), and
        formulas that fill fresh zeros (``max(dim)``'s scatter, ``x[i]``'s ``index_put``,
        ``gather``'s ``scatter_add``, ``index_select``'s ``index_add``, ``masked_select``'s
        ``masked_scatter``) make a copy of them.
        The step measured would hold both for a moment where a device holds one. Here the
        output is counted without a sample; if the first operand's storage goes next, the
        two never count at once; if anything else comes first, the sample is taken then.
        """
        if self.between_nodes:  # the engine's sum of two gradients of one input
            if func is not torch.ops.aten.add.Tensor or kwargs or len(args) != 2:
                return False
        elif not self.in_formula or func.overloadpacket not in _FILLS_FRESH:
            return False
        if torch.is_grad_enabled() or not args:
            return False
        first = args[0]
        if not all(
            type(t) is torch.Tensor
            for t in tree_leaves((args, kwargs, out))
            if isinstance(t, torch.Tensor)
        ):
            return False  # a subclass: autograd takes the out-of-place path on a device too
        if first.layout is not torch.strided or first.is_nested or not _dense(first):
            return False
        if first._is_view():  # its base holds the storage too: out of place on a device
            return False
        if first.shape != out.shape or first.dtype != out.dtype:
            return False
        storage = first.untyped_storage()
        key = storage._cdata
        if key not in self._kinds or storage.nbytes() != out.untyped_storage().nbytes():
            return False
        if self.in_formula and key not in self._fresh:
            return False  # a formula writes in place only into zeros it made itself
        self.track(out, MemoryKind.TEMPORARIES, sample=False)
        self._replacing = key
        return True


_aten = torch.ops.aten
_FILLS_FRESH = {
    _aten.index_put,
    _aten.scatter,
    _aten.scatter_add,
    _aten.index_add,
    _aten.masked_scatter,
}
"""Ops backward formulas run in place into zeros they made, but out of place for a
tensor subclass (``areAnyTensorSubclassLike`` in PyTorch's ``FunctionsManual.cpp`` and
``TensorAdvancedIndexing.cpp``)."""

_MATMULS = {torch.ops.aten.mm.default: slice(0, 2), torch.ops.aten.addmm.default: slice(1, 3)}


def _copied_inside(func: Any, args: Any) -> int:
    """Bytes a matrix product copies inside its kernel: an operand broadcast along a
    dimension (a zero stride), which BLAS cannot read, is made contiguous first, on CPU
    as for cuBLAS. The gradient of a summed output is one value broadcast, so backward's
    first matmul copies it: as large as the output (Linear blocks on 4,096 rows came out
    15% under the allocator's record without it)."""
    operands = _MATMULS.get(func)
    if operands is None:
        return 0
    copied = 0
    for matrix in args[operands]:
        if isinstance(matrix, torch.Tensor) and any(
            stride == 0 and size > 1
            for size, stride in zip(matrix.shape, matrix.stride(), strict=True)
        ):
            copied += matrix.numel() * matrix.element_size()
    return copied


def _dense(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` covers its elements without gaps or overlaps, in some dim order."""
    expected = 1
    dims = sorted(zip(tensor.shape, tensor.stride(), strict=True), key=lambda d: d[1])
    for size, stride in dims:
        if size == 1:
            continue
        if stride != expected:
            return False
        expected *= size
    return True


def make_optimizer(name: str, params: Sequence[nn.Parameter], *, foreach: bool = True) -> Any:
    """The optimizer of that name over ``params``, with torch's defaults but ``foreach``
    (torch's own default on CUDA; on CPU and meta it would loop over the parameters);
    None for ``none``."""
    if name == "adamw":
        return torch.optim.AdamW(params, foreach=foreach)
    if name == "sgd":
        return torch.optim.SGD(params, lr=0.01, momentum=0.9, foreach=foreach)
    if name == "none":
        return None
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, not {name!r}")


def measure(
    model: nn.Module,
    *,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    optimizer: str = "adamw",
    foreach: bool = True,
    assume: bool = True,
) -> Memory:
    """Run two training steps of ``model`` and say what they hold, when, and at the peak.

    The optimizer steps as torch does on CUDA (``foreach``: each update for
    all parameters at once), or with ``foreach=False`` as on CPU, one
    parameter at a time. The model is trained: its parameters change (on
    meta, nothing does). On
    meta the step runs as :func:`~execorder.backends.eager.trace` runs
    forward there: inputs real, what they alone decide computed
    (:class:`~execorder.backends.meta.MetaRun`), kernels meta lacks stood in
    for; a selection whose size it cannot know is assumed to keep every
    element (``assume``), and the result says so.

    Raises:
        ValueError: For an unknown optimizer.
        NeedsValues: On meta, where forward needs values computed from parameters.
    """
    kwargs = dict(kwargs or {})
    params = [p for p in model.parameters() if p.requires_grad]
    stepper = make_optimizer(optimizer, params, foreach=foreach)
    device = next((t.device.type for t in model.parameters()), "cpu")
    on_meta = device == "meta"
    meta_run = MetaRun(assume=assume) if on_meta else None
    run = MemoryRun()
    timeline: list[MemoryPoint] = []
    peaks = []
    with (
        meta_run if meta_run is not None else nullcontext(),
        meta_stand_ins(model) if on_meta else nullcontext(),
        _resizes(run),
        _calls(model, run, timeline),
        _saved(run, timeline),
        _grads(params, run),
    ):
        if meta_run is not None:
            args, kwargs = meta_run.adopt((tuple(args), kwargs))
        for param in model.parameters():
            run.track(param, MemoryKind.PARAMETERS)
        for buffer in model.buffers():
            run.track(buffer, MemoryKind.BUFFERS)
        for tensor in tree_leaves((args, kwargs)):
            if isinstance(tensor, torch.Tensor):
                run.track(tensor, MemoryKind.TEMPORARIES)
        for _ in (1, 2):
            run.peak = (0, run.point(), dict(run.alive))
            timeline.clear()
            _step(model, args, kwargs, stepper, run, timeline)
            peaks.append(run.peak)
    step = 1 if peaks[0][0] > peaks[1][0] else 2
    size, at, by_kind = peaks[step - 1]
    return Memory(
        optimizer=optimizer,
        foreach=foreach and stepper is not None,
        peak_bytes=size,
        peak_at=at,
        peak_step=step,
        at_peak=by_kind,
        timeline=tuple(timeline),
        device=device,
        assumed=bool(meta_run is not None and meta_run.assumptions),
        ddp_buckets_bytes=sum(p.numel() * p.element_size() for p in params),
    )


def _step(
    model: nn.Module,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    stepper: Any,
    run: MemoryRun,
    timeline: list[MemoryPoint],
) -> None:
    run.phase, run.call, run.calls = Phase.FORWARD, None, 0
    with run:
        outputs = model(*args, **kwargs)
        losses = [
            t.float().sum()
            for t in tree_leaves(outputs)
            if isinstance(t, torch.Tensor) and t.requires_grad and t.is_floating_point()
        ]
        timeline.append(run.point())
        run.phase, run.call = Phase.BACKWARD, None
        if losses:
            loss = torch.stack(losses).sum()
            with _between_nodes(loss, run):
                loss.backward()
            del loss
        del outputs, losses
        for param in model.parameters():  # FSDP2 sets its sharded gradients, unaccumulated
            if param.grad is not None:
                run.track(param.grad, MemoryKind.GRADIENTS, retag=True)
        run.call = None
        timeline.append(run.point())
        run.phase = Phase.OPTIMIZER
        if stepper is not None:
            stepper.step()
            stepper.zero_grad(set_to_none=True)
        else:
            model.zero_grad(set_to_none=True)
        timeline.append(run.point())


@contextmanager
def _calls(model: nn.Module, run: MemoryRun, timeline: list[MemoryPoint]) -> Iterator[None]:
    """Number the module calls of forward as the module order does, and sample at each."""
    ours = {id(m) for m in model.modules()}
    stack: list[int | None] = []

    def pre(module: nn.Module, _: Any) -> None:
        if id(module) not in ours or run.phase is not Phase.FORWARD:
            return
        stack.append(run.call)
        run.call = run.calls
        run.calls += 1
        timeline.append(run.point())

    def post(module: nn.Module, _: Any, __: Any) -> None:
        if id(module) not in ours or run.phase is not Phase.FORWARD or not stack:
            return
        timeline.append(run.point())
        run.call = stack.pop()

    handles = [
        nn.modules.module.register_module_forward_pre_hook(pre),
        nn.modules.module.register_module_forward_hook(post),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _between_nodes(loss: torch.Tensor, run: MemoryRun) -> Iterator[None]:
    """Keep ``run.between_nodes`` true while backward is between two nodes' work, where the
    engine sums the gradients of one input, and ``run.in_formula`` while a built-in node
    works (not a ``torch.autograd.Function``'s own backward): a hook before and after every
    node of ``loss``'s graph but ``AccumulateGrad`` (which sums into ``.grad`` in place
    itself)."""

    def pre(formula: bool, _: Any) -> None:
        run.in_backward(between_nodes=False, in_formula=formula)

    def post(_: Any, __: Any) -> None:
        run.in_backward(between_nodes=True)

    handles = []
    nodes = {}  # held while walking, so that no node's id is reused
    todo = [loss.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or id(node) in nodes:
            continue
        nodes[id(node)] = node
        todo.extend(next_node for next_node, _ in node.next_functions)
        if node.name() != "torch::autograd::AccumulateGrad":
            formula = not isinstance(node, torch.autograd.function.BackwardCFunction)
            handles += [
                node.register_prehook(functools.partial(pre, formula)),
                node.register_hook(post),
            ]
    del nodes, todo
    run.in_backward(between_nodes=True)
    try:
        yield
    finally:
        run.in_backward(between_nodes=False)
        for handle in handles:
            handle.remove()


@contextmanager
def _resizes(run: MemoryRun) -> Iterator[None]:
    """Storages resized in place, followed (no dispatch mode sees ``UntypedStorage.resize_``)."""
    resize = torch.UntypedStorage.resize_

    def followed(storage: Any, size: int) -> Any:
        done = resize(storage, size)
        run.resized(storage)
        return done

    torch.UntypedStorage.resize_ = followed  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        torch.UntypedStorage.resize_ = resize  # type: ignore[method-assign]


@contextmanager
def _saved(run: MemoryRun, timeline: list[MemoryPoint]) -> Iterator[None]:
    """What autograd saves in forward is an activation; backward using it runs that call."""

    def pack(tensor: torch.Tensor) -> Any:
        if run.phase is Phase.FORWARD:
            run.track(tensor, MemoryKind.ACTIVATIONS, retag=_is_temporary(run, tensor))
        # Detached: an op's saved output held as itself would hold its own grad_fn, a
        # cycle only the garbage collector frees. Work forward throws away would then
        # stay counted until a collection, where a real step frees it at once (RWKV
        # came out 1.2 MB over).
        return tensor.detach(), run.call

    def unpack(packed: Any) -> torch.Tensor:
        tensor, call = packed
        if run.phase is Phase.BACKWARD and call is not None and call != run.call:
            timeline.append(run.point())
            run.call = call
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield


def _is_temporary(run: MemoryRun, tensor: torch.Tensor) -> bool:
    try:
        known = run._kinds.get(tensor.untyped_storage()._cdata)
    except (RuntimeError, NotImplementedError):
        return False
    return known is not None and known[0] is MemoryKind.TEMPORARIES


@contextmanager
def _grads(params: Sequence[nn.Parameter], run: MemoryRun) -> Iterator[None]:
    """A gradient, once accumulated into ``.grad``, is a gradient."""

    def accumulated(param: torch.Tensor) -> None:
        if param.grad is not None:
            run.track(param.grad, MemoryKind.GRADIENTS, retag=True)

    handles = [p.register_post_accumulate_grad_hook(accumulated) for p in params]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
