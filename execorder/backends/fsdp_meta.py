"""FSDP2 itself, run on the meta device over a fake process group: one rank, no memory.

``fully_shard`` keeps parameters that are on meta there (deferred
initialization) and shards them as it would real ones. Only three things stop
it from running a step on them, and :func:`fsdp_on_meta` lifts each for its
duration:

- the device it takes from the mesh (a CPU mesh gives ``cpu``), where it makes
  its all-gather and reduce-scatter buffers: here ``meta``, so that no buffer
  is allocated;
- the device module it asks for streams and events (``torch.cpu`` for a CPU
  mesh; none exists for meta): ``torch.cpu``'s, which do nothing;
- its check at lazy initialization that no parameter is still on meta.

Everything else is FSDP2's own: its units, its all-gathers into one buffer,
the gathered parameters it frees and refills (``resize_``), its
reduce-scatters and sharded gradients, its prefetching. The process group
(:func:`fake_process_group`) is torch's fake backend: collectives that move
nothing, which on meta have nothing to move.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

META = torch.device("meta")
# Where FSDP2 lives: torch 2.6 and later, and before.
_PACKAGES = ("torch.distributed.fsdp._fully_shard", "torch.distributed._composable.fsdp")


class FsdpOnMetaError(RuntimeError):
    """This torch's FSDP2 lacks what :func:`fsdp_on_meta` changes (another version's layout)."""


@contextmanager
def fsdp_on_meta() -> Iterator[None]:
    """FSDP2 sharding and running meta parameters as on a device, for the duration.

    Raises:
        FsdpOnMetaError: When this torch's FSDP2 is not laid out as this expects.
    """
    import importlib

    shard_module = None
    for package in _PACKAGES:
        try:
            shard_module = importlib.import_module(f"{package}._fully_shard")
        except ImportError:
            continue
        break
    if shard_module is None:
        raise FsdpOnMetaError(f"torch {torch.__version__} has no FSDP2 that runs on meta here")
    from_mesh = getattr(shard_module, "_get_device_from_mesh", None)
    groups = sys.modules.get(f"{package}._fsdp_param_group")
    group = getattr(groups, "FSDPParamGroup", None)
    handles = {
        name: module
        for name, module in sys.modules.items()
        if name.startswith(package) and hasattr(module, "_get_device_handle")
    }
    if from_mesh is None or group is None or not handles:
        raise FsdpOnMetaError(
            f"torch {torch.__version__}'s FSDP2 is not laid out as expected ({package})"
        )
    original_handle = next(iter(handles.values()))._get_device_handle

    def device_handle(device_type: str = "cuda") -> Any:
        return torch.cpu if device_type == "meta" else original_handle(device_type)

    changes: list[tuple[Any, str, Any]] = [
        (shard_module, "_get_device_from_mesh", lambda mesh: META),
        *((module, "_get_device_handle", device_handle) for module in handles.values()),
    ]
    if hasattr(group, "_validate_no_meta_params"):
        changes.append((group, "_validate_no_meta_params", lambda self: None))
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in changes]
    try:
        for owner, name, value in changes:
            setattr(owner, name, value)
        with warnings.catch_warnings():
            # Advice for the user's own step (in-place ops on a view output), which
            # FSDP2 gives there too; this simulated rank does none.
            warnings.filterwarnings("ignore", "FSDP2-wrapped module", UserWarning)
            yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


@contextmanager
def fake_process_group(world_size: int) -> Iterator[Any]:
    """This process as rank 0 of ``world_size`` over torch's fake backend; yields a 1-D mesh.

    Joining a group makes torch prefix the process's tracebacks with its rank from then on
    (``sys.excepthook``, which leaving does not undo): the hook is given back as it was.
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore

    hook = sys.excepthook
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
    try:
        yield init_device_mesh("cpu", (world_size,))
    finally:
        dist.destroy_process_group()
        sys.excepthook = hook
