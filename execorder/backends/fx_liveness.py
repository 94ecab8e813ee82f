"""Gradient liveness of an FX graph: which parameters can get a gradient.

A parameter gets a gradient only if one of its uses reaches an output along
differentiable edges. The analysis walks the graph backwards from the output
node. It stops at values that carry no gradient (shapes, comparisons,
``argmax``, the indices of ``topk``/``sort``/``max(dim)``, ``detach``,
``.data``, ``*_like`` factories, integer casts), treats an in-place op as
part of the value it mutates when that value is read after it, and takes a
leaf module's call as using all the module's parameters.

FX records no node for ``torch.no_grad()``, ``torch.inference_mode()`` or
``torch.set_grad_enabled(False)``, but forward's Python runs while it traces:
the FX backend stamps each node with the grad mode it was created in
(``GRAD_ENABLED`` in ``node.meta``), and a node made with grad disabled
carries no gradient. After forward calls ``requires_grad_(False)`` or
``detach_()`` on a parameter, its uses give it no gradient; a use before the
call still reaches its gradient accumulator in a real backward (DDP counts it
ready, though ``.grad`` stays None), so it still counts.

A custom autograd ``Function``'s outputs lead to its inputs, as its own
backward does (:mod:`execorder.backends.fx_functions`): the ops its
``forward`` ran under ``no_grad`` are not walked.

A reentrant checkpoint's block is traced as backward recomputes it (with
grad), in a region (:mod:`execorder.backends.checkpointing`); as for any
autograd ``Function``, its outputs carry gradient only when grad was on where
it was called and one of its inputs needs grad, which here means it depends
on a trainable parameter (forward's own inputs are data).
"""

from __future__ import annotations

import builtins
import dataclasses
import operator
from collections.abc import Iterable, Iterator

import torch
import torch.fx
from torch import nn

from execorder.backends.checkpointing import REGION, Region
from execorder.backends.common import METADATA_ATTRS, METADATA_METHODS, named_leaves
from execorder.backends.fx_functions import FUNCTION_CALL, GRAD_ENABLED

COMPUTED_FROM = "execorder_computed_from"
"""``node.meta`` key of a tensor constant: the parameters its autograd history leads to."""

# Attributes of a tensor that are not tensors, or carry no gradient.
_NO_GRAD_ATTRS = METADATA_ATTRS | {"data", "grad", "is_leaf", "nbytes", "itemsize"}
_NO_GRAD_METHODS = METADATA_METHODS | frozenset(
    {
        "detach", "detach_", "item", "tolist", "data_ptr",
        "equal", "allclose", "is_nonzero", "is_same_size", "is_signed", "is_set_to",
        "argmax", "argmin", "argsort", "nonzero",
        "eq", "ne", "gt", "ge", "lt", "le", "greater", "greater_equal", "less", "less_equal",
        "not_equal", "isnan", "isinf", "isfinite", "logical_not",
        "isclose", "isneginf", "isposinf", "isreal", "signbit", "logical_and", "logical_or",
        "logical_xor", "any", "all", "count_nonzero", "argwhere", "multinomial", "histc",
        "long", "int", "short", "bool", "byte", "char",
        "new_zeros", "new_ones", "new_empty", "new_full", "new_tensor",
    }
)  # fmt: skip
_NO_GRAD_FUNCTIONS: frozenset[object] = frozenset(
    {
        builtins.len, builtins.isinstance,
        operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge,
        torch.argmax, torch.argmin, torch.argsort, torch.nonzero, torch.numel,
        torch.eq, torch.ne, torch.gt, torch.ge, torch.lt, torch.le, torch.greater,
        torch.greater_equal, torch.less, torch.less_equal, torch.not_equal,
        torch.isnan, torch.isinf, torch.isfinite, torch.logical_not,
        torch.isclose, torch.isin, torch.isneginf, torch.isposinf, torch.isreal, torch.signbit,
        torch.logical_and, torch.logical_or, torch.logical_xor, torch.any, torch.all,
        torch.count_nonzero, torch.argwhere, torch.multinomial, torch.histc,
        torch.nonzero_static,
        torch.bucketize, torch.searchsorted, torch.detach,
        torch.zeros_like, torch.ones_like, torch.empty_like, torch.full_like,
        torch.rand_like, torch.randn_like, torch.randint_like,
        torch.is_floating_point, torch.is_complex, torch.is_nonzero, torch.is_same_size,
        torch.result_type, torch.equal, torch.allclose, torch.can_cast, torch.promote_types,
    }
)  # fmt: skip
# Methods that read only the shape, dtype or device of their tensor arguments
# after the first (``x.view_as(w)``, ``x.to(w)``): no gradient goes to those.
_FIRST_ARGUMENT_ONLY = frozenset({"view_as", "expand_as", "reshape_as", "type_as", "to"})
# Ops whose result is a view of their first argument.
_VIEW_OPS = frozenset(
    {
        "view", "reshape", "transpose", "permute", "t", "expand", "expand_as", "narrow",
        "select", "squeeze", "unsqueeze", "flatten", "unflatten", "view_as", "unfold",
        "diagonal", "movedim", "as_strided", "getitem", "real", "imag",
    }
)  # fmt: skip


# Ops that return (values, indices); those marked "along a dim" only when given one.
_WITH_INDICES = frozenset(
    {"topk", "sort", "kthvalue", "mode", "cummax", "cummin", "frexp", "lu", "linalg_lu_factor"}
)  # fmt: skip
_WITH_INDICES_ALONG_A_DIM = frozenset({"max", "min", "median", "nanmedian"})


def _op_name(node: torch.fx.Node) -> str:
    if node.op == "call_method":
        return str(node.target)
    return getattr(node.target, "__name__", str(node.target))


def _casts_to_non_float(node: torch.fx.Node) -> bool:
    """``x.to(torch.long)``, ``x.type(torch.int32)`` and the like."""
    if node.op != "call_method" or node.target not in ("to", "type"):
        return False
    values = (*node.args, *node.kwargs.values())
    return any(
        isinstance(v, torch.dtype) and not (v.is_floating_point or v.is_complex) for v in values
    )


def _outputs_with_indices(node: torch.fx.Node) -> int:
    """How many outputs a (values, indices...) op returns: ``topk``, ``sort``, ``max(dim)``,
    ``unique(return_inverse=True)`` and the like; 0 for any other node."""
    if node.op not in ("call_method", "call_function"):
        return 0
    name = _op_name(node)
    if name in _WITH_INDICES or name.endswith("_with_indices"):  # max_pool2d_with_indices
        return 2
    if name == "linalg_lu_factor_ex":
        return 3
    if name in ("unique", "unique_consecutive"):
        flags = ("return_inverse", "return_counts")
        count = 1 + sum(bool(node.kwargs.get(flag)) for flag in flags)
        return count if count > 1 else 0
    along_a_dim = "dim" in node.kwargs or (len(node.args) > 1 and isinstance(node.args[1], int))
    return 2 if name in _WITH_INDICES_ALONG_A_DIM and along_a_dim else 0


def _is_indices(node: torch.fx.Node) -> bool:
    """An integer output of such an op (``.indices``, ``[1]``, unpacked): no gradient."""
    if node.target is not operator.getitem and node.target is not builtins.getattr:
        return False
    if node.op != "call_function" or len(node.args) < 2:
        return False
    source, key = node.args[0], node.args[1]
    count = _outputs_with_indices(source) if isinstance(source, torch.fx.Node) else 0
    if not count:
        return False
    if node.target is operator.getitem:
        return isinstance(key, int) and -count <= key < count and key % count != 0
    if node.target is builtins.getattr:
        return key in ("indices", "exponent")
    return False


def _made_without_grad(node: torch.fx.Node) -> bool:
    """An op or module call made inside no_grad / inference_mode: its result has no history.

    A parameter read (``get_attr``) is a source, not a result: it is read once
    for the whole graph, wherever it first appears.
    """
    return node.op not in ("get_attr", "placeholder") and node.meta.get(GRAD_ENABLED) is False


def _carries_no_gradient(node: torch.fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in _NO_GRAD_METHODS or _casts_to_non_float(node)
    if node.op == "call_function":
        if _is_indices(node):
            return True
        if node.target is builtins.getattr:
            return len(node.args) > 1 and node.args[1] in _NO_GRAD_ATTRS
        if node.target is torch.where and len(node.args) + len(node.kwargs) == 1:
            return True  # torch.where(condition): the indices where it holds
        return node.target in _NO_GRAD_FUNCTIONS
    return False


def _gradient_inputs(node: torch.fx.Node) -> list[torch.fx.Node]:
    """The input nodes a gradient goes to from ``node`` (when it carries one)."""
    if node.op == "call_method" and node.target in _FIRST_ARGUMENT_ONLY:
        first = node.args[0] if node.args else None
        return [first] if isinstance(first, torch.fx.Node) else []
    return node.all_input_nodes


def _is_in_place(node: torch.fx.Node) -> bool:
    if node.op == "call_function" and node.target is operator.setitem:
        return True
    if node.op == "call_method" and node.target == "__setitem__":  # on a tensor made eagerly
        return True
    name = _op_name(node)
    return (
        node.op in ("call_method", "call_function")
        and name.endswith("_")
        and not name.endswith("__")
        and node.target not in _NO_GRAD_METHODS
    )


def _mutated(node: torch.fx.Node) -> Iterable[torch.fx.Node]:
    """The node an in-place op writes to, and the bases it is a view of."""
    target = node.args[0] if node.args else None
    while isinstance(target, torch.fx.Node):
        yield target
        is_view = target.op in ("call_method", "call_function") and _op_name(target) in _VIEW_OPS
        target = target.args[0] if is_view and target.args else None


def _needs_grad(node: torch.fx.Node, params: dict[str, nn.Parameter], root: nn.Module) -> bool:
    """Whether a node's value needs grad, given whether its inputs' do (``needs``)."""
    if node.op == "get_attr":
        if COMPUTED_FROM in node.meta:
            return any(p.requires_grad for p in node.meta[COMPUTED_FROM])
        return node.target in params and params[str(node.target)].requires_grad
    if node.op == "call_module" and isinstance(node.target, str):
        return any(p.requires_grad for p in root.get_submodule(node.target).parameters())
    return False


def dead_regions(graph: torch.fx.Graph, root: nn.Module) -> set[Region]:
    """Reentrant checkpoint regions whose outputs carry no gradient.

    A region is dead when grad was off where its block was called, or when
    none of its inputs needs grad (nothing upstream depends on a trainable
    parameter): torch then never recomputes it in backward.
    """
    return _needs_grad_and_dead_regions(graph, root)[1]


def needs_grad(graph: torch.fx.Graph, root: nn.Module) -> dict[torch.fx.Node, bool]:
    """Whether each node's value needs grad: it depends on a trainable parameter through ops
    that carry a gradient (the inputs, as FX traces them, need none)."""
    return _needs_grad_and_dead_regions(graph, root)[0]


def _needs_grad_and_dead_regions(
    graph: torch.fx.Graph, root: nn.Module
) -> tuple[dict[torch.fx.Node, bool], set[Region]]:
    params = dict(root.named_parameters())
    needs: dict[torch.fx.Node, bool] = {}
    decided: dict[Region, bool] = {}

    def alive(region: Region | None) -> bool:
        """Decide the regions on ``region``'s chain, outermost first; whether all are alive."""
        chain = []
        undecided = region
        while undecided is not None and undecided not in decided:
            chain.append(undecided)
            undecided = undecided.parent
        for r in reversed(chain):
            decided[r] = r.outer_grad and any(needs.get(n, False) for n in r.inputs)
        while region is not None:
            if not decided[region]:
                return False
            region = region.parent
        return True

    for node in graph.nodes:
        region = node.meta.get(REGION)
        call = node.meta.get(FUNCTION_CALL)
        no_history = node.op == "placeholder" or _made_without_grad(node)
        if region is not None and not alive(region):
            needs[node] = False
        elif call is not None:
            needs[node] = call.outer_grad and any(needs.get(n, False) for n in call.inputs)
        elif no_history or _carries_no_gradient(node):
            needs[node] = False
        else:
            inputs = any(needs.get(n, False) for n in _gradient_inputs(node))
            needs[node] = inputs or _needs_grad(node, params, root)
    for node in graph.nodes:
        alive(node.meta.get(REGION))
    return needs, {region for region, ok in decided.items() if not ok}


def never_recomputed(graph: torch.fx.Graph, root: nn.Module) -> set[str]:
    """The parameters (by first name) the trace read only inside reentrant checkpoint regions
    torch never recomputes: grad was on where the block was called, but none of its inputs
    needs grad (the outermost region at each read: an inner one is run again by the outer
    one's recompute)."""
    needs = needs_grad(graph, root)
    first = {id(p): name for name, p in root.named_parameters()}
    params = dict(root.named_parameters(remove_duplicate=False))

    def unrecomputed(region: Region) -> bool:
        while region.parent is not None:
            region = region.parent
        return region.outer_grad and not any(needs.get(n, False) for n in region.inputs)

    inside: set[str] = set()
    elsewhere: set[str] = set()
    for node in graph.nodes:
        if node.op == "get_attr" and node.target in params:
            read = [params[str(node.target)]]
        elif node.op == "call_module" and isinstance(node.target, str):
            read = list(root.get_submodule(node.target).parameters())
        else:
            continue
        region = node.meta.get(REGION)
        into = inside if region is not None and unrecomputed(region) else elsewhere
        into.update(first[id(p)] for p in read if id(p) in first)
    return inside - elsewhere


def _in_dead_region(node: torch.fx.Node, dead: set[Region]) -> bool:
    region = node.meta.get(REGION)
    while region is not None:
        if region in dead:
            return True
        region = region.parent
    return False


def _value_of(node: torch.fx.Node) -> object:
    """What a node's value is: the attribute for a read of one, else the node itself."""
    return ("get_attr", node.target) if node.op == "get_attr" else node


def live_nodes(
    graph: torch.fx.Graph,
    dead: set[Region] | None = None,
    start: Iterable[torch.fx.Node] | None = None,
) -> set[torch.fx.Node]:
    """Nodes whose value can carry a gradient to the graph's output.

    Args:
        graph: A traced graph.
        dead: Checkpoint regions whose outputs carry no gradient (:func:`dead_regions`).
        start: Where the walk starts: the output node by default, one of
            forward's outputs for :func:`output_reach`.
    """
    # An in-place op changes the value it mutates: when that value is read
    # after the op, the op is live (and what the op reads); a write after
    # the last read changes nothing that reached the output. Each read of an
    # attribute is a node of its own (a tensor constant's, a buffer passed
    # in a list): writes to any of them write the one value.
    position = {node: i for i, node in enumerate(graph.nodes)}
    writers: dict[object, list[torch.fx.Node]] = {}
    for node in graph.nodes:
        if _is_in_place(node):
            for target in _mutated(node):
                writers.setdefault(_value_of(target), []).append(node)
    live: set[torch.fx.Node] = set()
    read: dict[torch.fx.Node, int] = {}  # the latest read of each node walked, by position
    end = len(position)
    first = list(start) if start is not None else [n for n in graph.nodes if n.op == "output"]
    stack = [(node, end) for node in first]
    while stack:
        node, read_at = stack.pop()
        if read.get(node, -1) >= read_at or (dead and _in_dead_region(node, dead)):
            continue
        read[node] = read_at
        written = writers.get(_value_of(node)) if writers else None
        call = node.meta.get(FUNCTION_CALL)
        if call is not None:  # the Function's own backward leads to its inputs
            if call.outer_grad:
                live.add(node)
                if written:
                    stack.extend((w, read_at) for w in written if position[w] < read_at)
                here = position[node]
                stack.extend((i, here) for i in call.inputs)
            continue
        if _made_without_grad(node):
            continue
        live.add(node)
        if written:
            stack.extend((w, read_at) for w in written if position[w] < read_at)
        if not _carries_no_gradient(node):
            here = position[node]
            stack.extend((i, here) for i in _gradient_inputs(node))
    return live


def live_params(
    graph: torch.fx.Graph,
    root: nn.Module,
    *,
    start: Iterable[torch.fx.Node] | None = None,
    dead: set[Region] | None = None,
    passes: dict[nn.Parameter, set[Region | None]] | None = None,
) -> set[nn.Parameter]:
    """Parameters of ``root`` with a use in ``graph`` that reaches the output.

    Args:
        graph: The traced graph of ``root``'s forward.
        root: The traced module.
        start: The nodes to reach, if not the output (:func:`live_nodes`).
        dead: The dead checkpoint regions, if already found (:func:`dead_regions`).
        passes: When given, gets each live parameter's backward passes: None
            for the backward itself, and each reentrant checkpoint region whose
            own backward (the recompute's) reaches it.
    """
    params = dict(root.named_parameters())
    nodes = live_nodes(graph, dead_regions(graph, root) if dead is None else dead, start)
    off = _switched_off(graph, params)
    position = {node: i for i, node in enumerate(graph.nodes)} if off else {}
    live: set[nn.Parameter] = set()
    for node in nodes:
        if node.op == "get_attr" and node.target in params:
            switched = off.get(str(node.target))
            # Only the uses before forward switches the parameter off count.
            if switched is None or any(
                user in nodes and position[user] < switched for user in node.users
            ):
                live.add(params[str(node.target)])
        elif node.op == "get_attr" and COMPUTED_FROM in node.meta:
            live.update(node.meta[COMPUTED_FROM])
        elif node.op == "call_module" and isinstance(node.target, str):
            live.update(root.get_submodule(node.target).parameters())
    if passes is not None:
        _add_passes(nodes, params, root, passes)
    return live


def _add_passes(
    nodes: set[torch.fx.Node],
    params: dict[str, nn.Parameter],
    root: nn.Module,
    passes: dict[nn.Parameter, set[Region | None]],
) -> None:
    """Each live use's backward pass (:func:`live_params`), by the parameters it reads.

    A use inside a reentrant checkpoint gets its gradient in that block's
    own backward, but for a parameter passed in as one of the block's
    arguments: its gradient is returned to the pass around the block.
    """

    def run(user: torch.fx.Node, source: torch.fx.Node) -> Region | None:
        region = user.meta.get(REGION)
        while region is not None and source in region.inputs:
            region = region.parent
        return region

    for node in nodes:
        if node.op == "get_attr":
            read = (
                [params[str(node.target)]]
                if node.target in params
                else list(node.meta.get(COMPUTED_FROM, ()))
            )
            if read:
                runs = {run(user, node) for user in node.users if user in nodes}
                for param in read:
                    passes.setdefault(param, set()).update(runs)
        elif node.op == "call_module" and isinstance(node.target, str):
            for param in root.get_submodule(node.target).parameters():
                passes.setdefault(param, set()).add(node.meta.get(REGION))


def _switched_off(graph: torch.fx.Graph, params: dict[str, nn.Parameter]) -> dict[str, int]:
    """By name: where forward first calls ``requires_grad_(False)`` or ``detach_()`` on it."""
    off: dict[str, int] = {}
    for index, node in enumerate(graph.nodes):
        if node.op != "call_method" or node.target not in ("requires_grad_", "detach_"):
            continue
        param = node.args[0] if node.args else None
        if not isinstance(param, torch.fx.Node) or param.op != "get_attr":
            continue
        if node.target == "requires_grad_":
            flag = node.args[1] if len(node.args) > 1 else node.kwargs.get("requires_grad", True)
            if flag is not False:
                continue
        if param.target in params:
            off.setdefault(str(param.target), index)
    return off


def output_reach(
    graph: torch.fx.Graph,
    root: nn.Module,
    passes: dict[nn.Parameter, set[Region | None]] | None = None,
) -> list[tuple[str, set[nn.Parameter]]] | None:
    """For each of forward's outputs, by path, the parameters with a use that reaches it.

    None when forward returns fewer than two values: then the output is the
    whole story. What they reach together is what :func:`live_params` finds
    from the output node.
    """
    output = next(node for node in graph.nodes if node.op == "output")
    leaves = list(_output_leaves(output.args[0] if output.args else None))
    if len(leaves) < 2:
        return None
    dead = dead_regions(graph, root)
    return [
        (path, live_params(graph, root, start=[node], dead=dead, passes=passes))
        for path, node in leaves
    ]


def _output_leaves(value: object, prefix: str = "") -> Iterator[tuple[str, torch.fx.Node]]:
    """The nodes forward returns, by path; a dataclass it builds (FX records the
    constructor's call) is walked field by field, as the eager backend walks the instance."""
    for path, node in named_leaves(value, torch.fx.Node):
        path = f"{prefix}.{path}" if prefix and path else prefix or path
        built = node.target if node.op == "call_function" else None
        if isinstance(built, type) and dataclasses.is_dataclass(built):
            names = [f.name for f in dataclasses.fields(built)]
            fields = dict(zip(names, node.args, strict=False)) | dict(node.kwargs)
            given = {name: fields[name] for name in names if name in fields}
            yield from _output_leaves(given, path)
        else:
            yield path, node
