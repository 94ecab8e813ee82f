"""Will a model fit? Its size, measured on the meta device, against the memory available.

execorder never starts building a model that cannot fit: a 70B-parameter
model is 276 GB in float32, and trying would take the machine down with it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from execorder.errors import MemoryGuardError

resource: ModuleType | None
try:
    import resource
except ImportError:  # Windows: no address-space limits to read
    resource = None


def tensors_of(model: nn.Module) -> Iterator[torch.Tensor]:
    """A model's parameters and buffers, each once, walked without recursion."""
    seen: set[int] = set()
    stack = [model]
    while stack:
        module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        for tensor in (*module._parameters.values(), *module._buffers.values()):
            if tensor is not None and id(tensor) not in seen:
                seen.add(id(tensor))
                yield tensor
        stack.extend(reversed([c for c in module._modules.values() if c is not None]))


def model_bytes(model: nn.Module) -> int:
    """Bytes of a model's parameters and buffers (a meta model knows them, holding none)."""
    return sum(t.numel() * t.element_size() for t in tensors_of(model))


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_available() -> int | None:
    """What the cgroup (v2) this process runs in still allows, when it sets a limit."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(int(limit) - used, 0)


def _address_space_available() -> int | None:
    """What ``ulimit -v`` (RLIMIT_AS) still allows this process, when it is set."""
    if resource is None:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return max(soft - int(line.split()[1]) * 1024, 0)
    except (OSError, ValueError, IndexError):
        pass
    return soft


def local_ranks() -> int:
    """How many ranks of a job run on this host (torchrun's ``LOCAL_WORLD_SIZE``); 1 outside
    a job."""
    try:
        return max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    except ValueError:
        return 1


def available_bytes(device: str) -> int | None:
    """Memory a new model could take on ``device`` (``"cpu"`` or ``"cuda"``); None if unknown.

    On CPU, a rank of a job gets its share of what the host has (and its cgroup
    allows): every rank on it may build its own copy at once, each reading the
    same free memory first. An address-space limit is each process's own.
    """
    if device == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info()
        return int(free)
    shared = [found for found in (_meminfo_available(), _cgroup_available()) if found is not None]
    if not shared and hasattr(os, "sysconf"):
        with contextlib.suppress(ValueError, OSError):
            shared.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    known = [found // local_ranks() for found in shared]
    if (own := _address_space_available()) is not None:
        known.append(own)
    return min(known) if known else None


def fits(model: nn.Module, device: str, *, extra: int = 0) -> bool:
    """Whether ``model`` (measured on meta), and ``extra`` bytes more, fit on ``device``."""
    available = available_bytes(device)
    return available is None or model_bytes(model) * 1.1 + extra <= available


def check_fits(model: nn.Module, device: str, *, what: str, why: str = "", extra: int = 0) -> None:
    """Refuse to build ``model`` (measured on meta) on ``device`` if it cannot fit.

    Args:
        model: The model, on the meta device.
        device: Where it would be built.
        what: The model, for the message (``"Llama()"``).
        why: Why it would be built there (a fallback's reason), if not asked for.
        extra: Bytes it needs besides (the inputs of its forward).

    Raises:
        MemoryGuardError: Saying what it needs, what there is, and what to do.
    """
    needed = model_bytes(model)
    available = available_bytes(device)
    # The parameters and buffers alone, with a margin for forward's activations.
    if available is not None and needed * 1.1 + extra > available:
        ranks = local_ranks() if device != "cuda" else 1
        raise MemoryGuardError(what, device, needed + extra, available, why=why, ranks=ranks)


@contextmanager
def capped(what: str, *, running: str | None = None) -> Iterator[None]:
    """Build ``what`` on CPU, unmeasured, or run it there (``running``: what runs, ``"a
    forward"``), with at most the memory available to grow into.

    A model that could not be built on meta could not be measured either, and
    what a forward or a training step holds besides the model is not measured
    before it runs: the address space (``ulimit -v``, Linux) is capped for it,
    so what is too big for the machine fails at once with a clear error
    instead of meeting the kernel's out-of-memory killer.

    Raises:
        MemoryGuardError: If it runs out of the memory available.
    """
    available = available_bytes("cpu")
    if resource is None or available is None:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = _vm_size() + available
    if soft != resource.RLIM_INFINITY:
        cap = min(cap, soft)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    except Exception as exc:
        if not _out_of_memory(exc):
            raise
        raise MemoryGuardError(
            what, "cpu", None, available, ranks=local_ranks(), running=running
        ) from exc
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _out_of_memory(exc: BaseException | None) -> bool:
    """Whether ``exc``, or what it was raised from (a forward's error wraps the model's),
    is an allocation that found no memory."""
    while exc is not None:
        if isinstance(exc, MemoryError):
            return True
        # torch's "DefaultCPUAllocator: can't allocate memory"
        if isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc):
            return True
        exc = exc.__cause__
    return False


def _vm_size() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0
