"""One walk of a module tree: every name, owner and parameter slice of a model."""

from __future__ import annotations

from typing import NamedTuple

from torch import nn


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
    is walked all the same.
    """
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
