"""What :func:`~execorder.backends.eager.record` accepts: wrapped models, compiled ones, DDP."""

from __future__ import annotations

import sys
from contextlib import nullcontext
from typing import Any, NamedTuple

import torch
from torch import nn

from execorder.errors import RecordingError
from execorder.recording import ModuleTree, class_name, unwrap


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
    if getattr(torch.compiler, "set_stance", None) is None and _compiled(model):
        raise RecordingError(
            f"{name} is compiled (torch.compile), and this torch cannot run it eagerly for "
            "the recording (torch.compiler.set_stance needs torch 2.6 or newer); "
            "record the model uncompiled"
        )


def _compiled(model: nn.Module) -> bool:
    """Whether any module of ``model`` runs compiled code (``torch.compile``, ``.compile()``)."""
    optimized = getattr(sys.modules.get("torch._dynamo.eval_frame"), "OptimizedModule", None)
    return any(
        getattr(m, "_compiled_call_impl", None) is not None
        or (optimized is not None and isinstance(m, optimized))
        for m in model.modules()
    )


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


def ddp_around(model: nn.Module) -> DdpSettings | None:
    """The settings of the DDP whose forward runs ``model`` now, if any (read off the stack)."""
    ddp = getattr(sys.modules.get("torch.nn.parallel.distributed"), "DistributedDataParallel", None)
    if ddp is None:
        return None
    codes = {f.__code__ for f in (ddp.forward, ddp._run_ddp_forward) if hasattr(f, "__code__")}
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code in codes:
            wrapper = frame.f_locals.get("self")
            if isinstance(wrapper, ddp) and unwrap(wrapper) is model:
                return DdpSettings(
                    bool(wrapper.find_unused_parameters),
                    bool(getattr(wrapper, "static_graph", False)),
                )
        frame = frame.f_back  # type: ignore[assignment]
    return None
