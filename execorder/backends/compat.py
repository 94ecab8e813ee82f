"""A drop-in replacement for PyTorch's private ``_ExecOrderTracer``.

``ExecOrderTracer().patch_tracer(tracer=..., root_module=...)`` patches any
``torch.fx.Tracer`` and leaves ``exec_info`` with the same attributes and, on
models the original handles correctly, the same values. It also sees
parameters the original misses (keyword and nested arguments, arguments of
leaf modules, returned parameters) and can build a full :class:`Report`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch.fx
from torch import nn

from execorder.backends.fx import record_tracer
from execorder.backends.fx_liveness import live_params
from execorder.recording import Recorder, build_report
from execorder.report import Mode, Report


class ParamUsageInfo(NamedTuple):
    """A module and the named parameters used together in one of its calls."""

    module: nn.Module
    named_params: list[tuple[str, nn.Parameter]]


class ExecutionInfo:
    """Live view of a recorder with the original ``_ExecutionInfo``'s attributes.

    Attributes:
        curr_module: The module whose call is being traced.
        module_forward_order: Modules in forward order, one entry per call.
        module_to_param_usage_infos: Each module's usage groups of its last
            call (the original keeps only the last call; per-call usage is in
            :meth:`ExecOrderTracer.report`).
        param_forward_order: Parameters in first-use order.
        visited_params: The set of used parameters.
    """

    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder
        self._fqns = {id(p): n for n, p in recorder.root.named_parameters()}

    @property
    def curr_module(self) -> nn.Module:
        return self._recorder.current.module

    @property
    def module_forward_order(self) -> list[nn.Module]:
        return [call.module for call in self._recorder.calls]

    @property
    def param_forward_order(self) -> list[nn.Parameter]:
        return self._recorder.param_order

    @property
    def visited_params(self) -> set[nn.Parameter]:
        return self._recorder.visited

    @property
    def module_to_param_usage_infos(self) -> dict[nn.Module, list[ParamUsageInfo]]:
        infos: dict[nn.Module, list[ParamUsageInfo]] = {}
        for call in self._recorder.calls:
            infos[call.module] = [
                ParamUsageInfo(
                    group.module,
                    # Same names as the original: local names for a whole
                    # module's parameters, qualified names for an op's.
                    list(group.module.named_parameters())
                    if group.whole_module
                    else [(self._fqns[id(p)], p) for p in group.params],
                )
                for group in call.groups
            ]
        return infos


class ExecOrderTracer:
    """Records execution order while a ``torch.fx.Tracer`` traces a module.

    Example:
        >>> tracer = torch.fx.Tracer()
        >>> eo = ExecOrderTracer()
        >>> with eo.patch_tracer(tracer=tracer, root_module=model):
        ...     tracer.trace(model, {"run_all_layers": True})
        >>> eo.exec_info.param_forward_order
    """

    def __init__(self) -> None:
        self.exec_info: ExecutionInfo | None = None
        self._recorder: Recorder | None = None
        self._tracer: torch.fx.Tracer | None = None

    @contextmanager
    def patch_tracer(self, tracer: torch.fx.Tracer, root_module: nn.Module) -> Iterator[None]:
        """Patch ``tracer`` for the duration of the context; restored on exit.

        Args:
            tracer: Any ``torch.fx.Tracer`` instance.
            root_module: The module about to be traced.
        """
        self._recorder = Recorder(root_module)
        self._tracer = tracer
        self.exec_info = ExecutionInfo(self._recorder)
        # The original counts metadata reads (w.shape) as uses: so does the drop-in.
        with record_tracer(tracer, root_module, self._recorder, metadata_is_use=True):
            yield

    def report(self, *, target: str | None = None, concrete_args: Any = None) -> Report:
        """Freeze what was recorded into a :class:`Report`.

        Raises:
            RuntimeError: If nothing was traced under :meth:`patch_tracer` yet.
        """
        if self._recorder is None:
            raise RuntimeError("report() needs a trace run under patch_tracer() first")
        root = self._recorder.root
        graph = getattr(self._tracer, "graph", None)
        return build_report(
            self._recorder,
            target=target or type(root).__name__,
            mode=Mode.FX,
            concrete_args=concrete_args,
            live=live_params(graph, root) if graph is not None else None,
        )
