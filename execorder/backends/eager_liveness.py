"""Liveness for an eager run: which parameters a backward reached.

The eager counterpart of :mod:`execorder.backends.fx_liveness`: from the
backward that ran inside the recording (gradient hooks), else from the
outputs' autograd graph, walked when the block ends."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from execorder.backends.checkpointing import is_reentrant, is_torch_checkpoint, recompute
from execorder.backends.common import named_leaves, tensors


class Edge(NamedTuple):
    """One of forward's output tensors, kept without the tensor (its data): where its
    gradient enters autograd's graph (the node, and which of the node's outputs it is).

    ``path`` names it among the outputs (:func:`~execorder.backends.common.named_leaves`;
    None inside a set), ``param`` is the model's parameter it is, returned as it is.
    """

    path: str | None
    grad_fn: Any
    output_nr: int
    requires_grad: bool
    param: nn.Parameter | None


def output_edges(outputs: Any, own: Mapping[int, nn.Parameter]) -> list[Edge]:
    """The edges of forward's output tensors (``own``: the model's parameters by id, those
    swapped in for them included), which hold no output alive: a recording that kept the
    outputs would keep them (a language model's logits) through the step's backward."""
    paths = {id(t): path for path, t in named_leaves(outputs, torch.Tensor)}
    return [
        Edge(paths.get(id(t)), t.grad_fn, t.output_nr, t.requires_grad, own.get(id(t)))
        for t in tensors(outputs)
    ]


def live_params(
    outputs: Any,
    params: Sequence[nn.Parameter],
    stand_ins: Mapping[int, nn.Parameter] | None = None,
    passes: dict[nn.Parameter, set[Any]] | None = None,
    *,
    into_blocks: bool = True,
    starts: Sequence[tuple[Any, int]] = (),
    skip: Collection[tuple[int, int]] = (),
    edges: Sequence[Edge] = (),
) -> set[nn.Parameter]:
    """Those of ``params`` whose gradient accumulators the outputs' autograd graph reaches.

    The graph is walked, not run; a reentrant checkpoint's block, which only
    backward would record, is run again to walk its graph too, from the
    outputs the walk reaches (:mod:`execorder.backends.checkpointing`);
    with ``into_blocks=False`` the walk stops at such a block instead.
    ``stand_ins`` maps the ids of parameters swapped in during forward to
    those of ``params`` they stand for. ``passes``, when given, gets each
    live parameter's backward passes: None for the backward itself, and the
    node of each reentrant checkpoint whose own backward reaches it.
    ``starts`` are more places to walk from (``(node, which of its outputs)``);
    ``skip`` the edges not to follow, as ``(id(node), which of its edges)``;
    ``edges`` are outputs kept as :class:`Edge`, walked as ``outputs`` are
    (:func:`output_edges`).
    DDP's ``_DDPSink`` passes each of its outputs on to its own input alone
    (:func:`sink_passes`): a walk follows that edge only, not every edge of
    the node.
    """
    own = {id(p): p for p in params} | dict(stand_ins or {})
    live: set[nn.Parameter] = set()
    seen: set[Any] = set()
    # (autograd node, which of its outputs, the backward pass it runs in)
    stack: list[tuple[Any, int, Any]] = []

    def reaches(param: nn.Parameter, run: Any) -> None:
        live.add(param)
        if passes is not None:
            passes.setdefault(param, set()).add(run)

    for out in (*edges, *output_edges(outputs, own)):
        if out.grad_fn is not None:
            stack.append((out.grad_fn, out.output_nr, None))
        elif out.param is not None and out.requires_grad:
            reaches(out.param, None)  # a parameter returned as it is
    stack += [(fn, number, None) for fn, number in starts if fn is not None]
    reached: dict[Any, set[int]] = {}  # a reentrant checkpoint's node -> outputs reached
    runs_in: dict[Any, Any] = {}  # a reentrant checkpoint's node -> the pass that reached it
    expanded: dict[Any, set[int]] = {}
    recomputed: dict[Any, tuple[Any, ...]] = {}
    # A recomputed block's detached input, by id -> the edge into the graph around it.
    inputs: dict[int, tuple[Any, int, Any] | None] = {}
    keep: list[Any] = []  # the recomputed tensors, alive while their ids are used
    while stack:
        while stack:
            fn, number, run = stack.pop()
            passed = sink_passes(fn) if type(fn).__name__ == "_DDPSinkBackward" else None
            if passed is not None:
                to = passed[number] if number < len(passed) else None
                if to is not None and fn.next_functions[to][0] is not None:
                    stack.append((*fn.next_functions[to], run))
                continue
            if is_reentrant(fn):
                reached.setdefault(fn, set()).add(number)
                runs_in.setdefault(fn, run)
                continue
            variable = getattr(fn, "variable", None)  # an accumulator: reached in each pass
            if variable is not None and id(variable) in own:
                reaches(own[id(variable)], run)
                continue
            if fn in seen:
                continue
            seen.add(fn)
            if variable is not None and id(variable) in inputs:
                edge = inputs[id(variable)]
                if edge is not None:
                    stack.append(edge)
            stack.extend(
                (next_fn, nr, run)
                for k, (next_fn, nr) in enumerate(fn.next_functions)
                if next_fn is not None and not (skip and (id(fn), k) in skip)
            )
        for fn, numbers in reached.items() if into_blocks else ():
            new = numbers - expanded.setdefault(fn, set())
            if not new:
                continue
            expanded[fn] |= new
            if fn not in recomputed:
                try:
                    block_outputs, detached, indices = recompute(fn)
                except Exception:
                    if is_torch_checkpoint(fn):
                        raise
                    # A Function of the model's own that cannot run again here: walked as
                    # any node, to its inputs (what it reads inside stays unreached).
                    recomputed[fn] = ()
                    stack.extend(
                        (next_fn, nr, runs_in[fn])
                        for next_fn, nr in fn.next_functions
                        if next_fn is not None
                    )
                    continue
                recomputed[fn] = block_outputs
                keep += [*block_outputs, *detached]
                # Gradients the block returns for its inputs go on in the pass around it.
                onward = [
                    (e[0], e[1], runs_in[fn]) if e[0] is not None else None
                    for e in fn.next_functions
                ]
                for k, index in enumerate(indices):
                    inputs[id(detached[index])] = onward[k] if k < len(onward) else None
            for number in new:
                if number >= len(recomputed[fn]):
                    continue
                out = recomputed[fn][number]
                if not isinstance(out, torch.Tensor):
                    continue
                if out.grad_fn is not None:
                    stack.append((out.grad_fn, out.output_nr, fn))  # the block's own backward
                elif id(out) in own:
                    reaches(own[id(out)], fn)  # the block returns a parameter as it is
                elif (edge := inputs.get(id(out))) is not None:
                    stack.append(edge)  # the block returns an input as it is
    return live


def sink_passes(node: Any) -> list[int | None] | None:
    """The edge each output of DDP's ``_DDPSink`` node passes its gradient on to (None for
    one that takes none), read off the node itself: its outputs are its inputs after DDP's
    weak reference to itself (forward's outputs, as DDP flattened them), and its edges
    those of the inputs that require grad, in order. None where the node does not say
    which inputs require grad."""
    needs = getattr(node, "needs_input_grad", None)
    if not isinstance(needs, tuple):
        return None
    edges = iter([k for k, (next_fn, _) in enumerate(node.next_functions) if next_fn is not None])
    return [next(edges, None) if need else None for need in needs[1:]]


def nodes_named(outputs: Any, name: str) -> list[Any]:
    """The autograd nodes of type ``name`` in the outputs' graph (walked, not run)."""
    stack = [t.grad_fn for t in tensors(outputs) if t.grad_fn is not None]
    seen: set[Any] = set()
    found = []
    while stack:
        fn = stack.pop()
        if fn in seen:
            continue
        seen.add(fn)
        if type(fn).__name__ == name:
            found.append(fn)
        stack += [next_fn for next_fn, _ in fn.next_functions if next_fn is not None]
    return found


def output_reach(
    edges: Sequence[Edge],
    params: Sequence[nn.Parameter],
    stand_ins: Mapping[int, nn.Parameter] | None = None,
    passes: dict[nn.Parameter, set[Any]] | None = None,
) -> list[tuple[str, set[nn.Parameter]]] | None:
    """For each of forward's outputs (:func:`output_edges`), by path, the parameters whose
    accumulators it reaches.

    None when fewer than two outputs carry a gradient: then the output is the
    whole story. Each output is walked on its own (:func:`live_params`); what
    they reach together is what :func:`live_params` finds from all of them.
    """
    leaves = [edge for edge in edges if edge.path is not None and edge.requires_grad]
    if len(leaves) < 2:
        return None
    return [
        (edge.path or "", live_params((), params, stand_ins, passes, edges=[edge]))
        for edge in leaves
    ]


class GradHooks:
    """Post-accumulate-grad hooks, written straight into each tensor's hook dict.

    As ``Tensor.register_post_accumulate_grad_hook`` does, without its handle
    objects: about 9x cheaper, and on a GPU this runs while the device waits.
    :meth:`remove` takes them out the way a handle does: the key leaves the dict.

    A hook runs whenever the accumulator runs, with a gradient or with none (a
    model's own Function may pass none on): that is what DDP waits for, and
    counts ready.
    """

    def __init__(self) -> None:
        self._key = object()
        self._dicts: list[dict[Any, Any]] = []

    def add(self, params: Sequence[nn.Parameter], hook: Callable[[Any], None]) -> None:
        key = self._key
        with own_reads():
            for param in params:
                hooks = param._post_accumulate_grad_hooks
                if hooks is None:
                    param._post_accumulate_grad_hooks = hooks = OrderedDict()
                hooks[key] = hook
                self._dicts.append(hooks)

    def remove(self) -> None:
        for hooks in self._dicts:
            hooks.pop(self._key, None)
        self._dicts.clear()


def own_reads() -> Any:
    """execorder's own reads of parameters: no parameter class's ``__torch_function__`` runs."""
    return torch._C.DisableTorchFunctionSubclass()


def sum_backward(outputs: Any) -> None:
    """Backward from the sum of every output that requires grad."""
    losses = [t.float().sum() for t in tensors(outputs) if t.requires_grad]
    if losses:
        loss = losses[0] if len(losses) == 1 else torch.stack(losses).sum()
        loss.backward()
