"""One walk of a module tree: every name, owner and parameter slice of a model.

The walk sees a model as its author wrote it, inside the wrappers a training
job adds: a wrapper that only runs one module (DDP's and DataParallel's ``module``,
``torch.compile``'s ``_orig_mod``, ``checkpoint_wrapper``'s
``_checkpoint_wrapped_module``) is not a module of its own, and the module it
runs takes its name; a class that ``fully_shard`` or ``replicate`` made for a
module (``FSDPLinear``) is named as the module's own (``Linear``).
"""

from __future__ import annotations

import sys
from collections.abc import Collection
from typing import NamedTuple

from torch import nn

# Wrappers that run exactly one module: where torch keeps the class, its name,
# and the attribute holding the module it runs.
_WRAPPERS = (
    ("torch.nn.parallel.distributed", "DistributedDataParallel", "module"),
    ("torch.nn.parallel.data_parallel", "DataParallel", "module"),
    ("torch._dynamo.eval_frame", "OptimizedModule", "_orig_mod"),
    (
        "torch.distributed.algorithms._checkpoint.checkpoint_wrapper",
        "ActivationWrapper",
        "_checkpoint_wrapped_module",
    ),
)


def _wrapper_classes() -> dict[type, str]:
    """The wrapper classes loaded so far (none is imported here), with their module's attribute."""
    found = {}
    for path, name, attribute in _WRAPPERS:
        cls = getattr(sys.modules.get(path), name, None)
        if isinstance(cls, type):
            found[cls] = attribute
    return found


def _wrapped(module: nn.Module, wrappers: dict[type, str]) -> nn.Module | None:
    """The module that ``module`` only runs, if it is such a wrapper (no parameters of its own)."""
    for cls, attribute in wrappers.items():
        if isinstance(module, cls):
            inner = module._modules.get(attribute)
            if inner is not None and len(module._modules) == 1 and not module._parameters:
                return inner
    return None


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside any wrappers that only run it: ``DDP(torch.compile(m))`` gives ``m``."""
    wrappers = _wrapper_classes()
    while (inner := _wrapped(module, wrappers)) is not None:
        module = inner
    return module


def class_name(module: nn.Module) -> str:
    """The name of the module's own class, also when ``fully_shard`` or ``replicate`` changed it.

    Those make a class per module class, ``type("FSDP" + cls.__name__, (FSDPModule, cls), ...)``,
    and set it on the module; the name to report is ``cls``'s.
    """
    kind = type(module)
    bases = kind.__bases__
    if (
        len(bases) == 2
        and bases[0].__module__.startswith("torch.distributed.")
        and kind.__name__.endswith(bases[1].__name__)
        and kind.__name__ != bases[1].__name__
    ):
        return bases[1].__name__
    return kind.__name__


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
    depth: int = 0
    """How deeply modules nest: 0 for a module without children."""

    @property
    def has_lazy_params(self) -> bool:
        """Whether a lazy module (``nn.LazyLinear``, ...) awaits its first forward."""
        return any(nn.parameter.is_lazy(p) for p in self.params)


def module_tree(root: nn.Module) -> ModuleTree:
    """Walk ``root`` once, as ``named_modules(remove_duplicate=False)`` does.

    Without recursion: a model nested deeper than Python's recursion limit
    is walked all the same. A wrapper that only runs one module is walked
    through (see the module's docstring), ``root`` included.
    """
    wrappers = _wrapper_classes()
    module_names: dict[int, list[str]] = {}
    param_names: dict[int, list[str]] = {}
    modules: dict[int, nn.Module] = {}
    params: dict[int, nn.Parameter] = {}
    owners: dict[int, set[int]] = {}
    spans: dict[int, tuple[int, int]] = {}
    shared = False
    deepest = 0
    # (prefix, module, depth), or (module id, start) to close a module's span.
    stack: list[tuple[str, nn.Module, int] | tuple[int, int]] = [("", root, 0)]
    while stack:
        item = stack.pop()
        if len(item) == 2:
            key, start = item
            spans[key] = (start, len(params))
            continue
        prefix, module, depth = item
        while wrappers and (inner := _wrapped(module, wrappers)) is not None:
            module = inner
        deepest = max(deepest, depth)
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
        stack.append((key, start))
        children = [(dot + n, c, depth + 1) for n, c in module._modules.items() if c is not None]
        stack.extend(reversed(children))
    return ModuleTree(
        module_names,
        param_names,
        list(modules.values()),
        list(params.values()),
        owners,
        {} if shared else spans,
        deepest,
    )


def ddp_registered(module: nn.Module, ignored: Collection[str]) -> list[nn.Parameter]:
    """The parameters ``DistributedDataParallel(module)`` registers, in the order it numbers them,
    those that required grad when it was built: the caller keeps those (requires_grad now is
    not that: forward may switch it off).

    As its ``_build_params_for_reducer`` lists them: each module once, in
    ``named_modules()`` order, with its own parameters but those named in
    ``ignored`` (``_ddp_params_and_buffers_to_ignore``), each parameter once.
    DDP matches ``f"{module_name}.{param_name}"``, so a parameter of the root
    itself is matched as ``.name`` (a plain ``name`` does not take it out).
    Without recursion.
    """
    ignored = set(ignored)
    seen: set[int] = set()
    registered: dict[int, nn.Parameter] = {}
    stack: list[tuple[str, nn.Module]] = [("", module)]
    while stack:
        prefix, current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for name, param in current._parameters.items():
            if param is not None and f"{prefix}.{name}" not in ignored:
                registered.setdefault(id(param), param)
        dot = f"{prefix}." if prefix else ""
        children = [(dot + n, c) for n, c in current._modules.items() if c is not None]
        stack.extend(reversed(children))
    return list(registered.values())
