"""Across ranks, over torch.distributed: find where the ranks of a job part, before it hangs.

Every rank reduces its report to a 48-byte digest (its module calls, its
parameters' statuses, its gradient order) and all-gathers the digests over
the process group: ranks with equal digests behaved alike, and when all are
equal that is all that is sent. Otherwise one rank of each group broadcasts
its record (module names in order, each parameter's status), and every rank
computes the same :class:`~execorder.analysis.ranks.RankComparison`.

    with execorder.record(model) as rec:          # on every rank, one step
        loss = model(batch).sum(); loss.backward()
    result = execorder.ranks.compare(rec.report())
    if result.diverged and dist.get_rank() == 0:
        print(result.first_divergence)
"""

from __future__ import annotations

import datetime
import os
import socket
import subprocess
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.distributed as dist

from execorder.analysis.ranks import (
    DIGEST_BYTES,
    RankComparison,
    RankRecord,
    compare_records,
    group_ranks,
    record_of,
)
from execorder.errors import DdpWaitingError
from execorder.report import Report

if TYPE_CHECKING:
    from execorder.backends.eager import Recording

__all__ = [
    "RankComparison",
    "RankExit",
    "RankRecord",
    "Unreduced",
    "collective_device",
    "compare",
    "compare_job",
    "launch",
    "record_of",
    "unreduced",
]


def collective_device(group: Any = None) -> torch.device:
    """Where the group's collectives want tensors: the local GPU for NCCL, else CPU."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


MAX_GROUPS = 8


def compare(
    report: Report | RankRecord,
    group: Any = None,
    *,
    target: str | None = None,
    max_groups: int = MAX_GROUPS,
) -> RankComparison:
    """Compare this rank's report with every other rank's; call it on every rank.

    Each rank sends 48 bytes (all-gathered); only when ranks differ does one
    rank of each group of alike ranks broadcast its record. Every rank gets
    the same result.

    Args:
        report: This rank's report (from ``execorder.record`` around a step,
            or ``execorder.profile``), or a record (one with ``error`` set
            when this rank could not make a report: the others then do not
            wait for it in vain).
        group: The process group; None for the default one.
        target: What to call the model; by default the report's target.
        max_groups: How many groups of alike ranks send a record, at most
            (those of the lowest ranks); the others are listed, not
            compared. It bounds the cost when every rank differs.

    Returns:
        Whether the ranks diverged, their groups, the first module call
        where they part, and the parameters whose status differs.

    Raises:
        RuntimeError: If torch.distributed is not initialized.
        DdpWaitingError: If the report's step left a DDP waiting on this rank for a
            gradient that did not come (``report.ddp_waiting``): nothing is sent, since
            its all-reduces stopped part-way here.
    """
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "execorder.ranks.compare needs an initialized process group "
            "(torch.distributed.init_process_group), on every rank"
        )
    if isinstance(report, Report):
        if report.ddp_waiting:  # this rank's all-reduces stopped part-way: send nothing
            raise DdpWaitingError(report.ddp_waiting, [p.name for p in report.no_grad()])
        record, name = record_of(report), target or report.target
    else:
        record, name = report, target or ""
    world = dist.get_world_size(group)
    device = collective_device(group)
    mine = torch.frombuffer(bytearray(record.digest()), dtype=torch.uint8).to(device)
    gathered = torch.empty(world * DIGEST_BYTES, dtype=torch.uint8, device=device)
    # One flat tensor, not one per rank: at thousands of ranks that is one buffer.
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(gathered, mine, group=group)
    flat = bytes(gathered.cpu().tolist())
    groups = group_ranks([flat[r * DIGEST_BYTES : (r + 1) * DIGEST_BYTES] for r in range(world)])
    if len(groups) == 1:
        return compare_records([(groups[0], record)], world_size=world, target=name)
    me = dist.get_rank(group)
    records: list[tuple[tuple[int, ...], RankRecord | None]] = []
    for ranks in groups[:max_groups]:
        payload: list[Any] = [record if me == ranks[0] else None]
        source = ranks[0] if group is None else dist.get_global_rank(group, ranks[0])
        dist.broadcast_object_list(payload, src=source, group=group, device=device)
        records.append((ranks, payload[0]))
    records += [(ranks, None) for ranks in groups[max_groups:]]
    return compare_records(records, world_size=world, target=name)


def compare_job(
    record: Callable[[int, int], Report],
    *,
    device: str | None = None,
    timeout: float = 300,
    target: str | None = None,
    explain: Callable[[Exception], str] = str,
) -> tuple[int, RankComparison]:
    """One rank of a job that compares its ranks' forwards, from process group up to teardown.

    Call it on every rank of a job torchrun started (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set): it sets up the
    default process group (NCCL on the ``LOCAL_RANK`` GPU when ``device`` is
    ``"cuda"``, else gloo), makes this rank's report with ``record(rank,
    world_size)``, compares it with every other rank's (:func:`compare`), and
    tears the group down once every rank has its result. A rank whose
    ``record`` raises sends its error in place of a record, so the others do
    not wait for it in vain; the result lists it in ``errors``.

    Args:
        record: Makes this rank's report; given the rank and the world size.
        device: ``"cuda"`` for NCCL on this rank's GPU; anything else, gloo.
        timeout: Seconds a collective waits for the other ranks.
        target: What to call the model in the result.
        explain: The text of a rank's error, from the exception ``record``
            raised (another exception than ``Exception``, such as
            ``KeyboardInterrupt``, is not caught).

    Returns:
        This rank's number, and the comparison (the same on every rank).

    Raises:
        RuntimeError: If this process is not a rank of a job (``RANK`` or
            ``WORLD_SIZE`` unset), or a process group is set up already.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise RuntimeError(
            "compare_job runs on every rank of a job: RANK and WORLD_SIZE are not set "
            "(start it with torchrun)"
        )
    if dist.is_initialized():
        raise RuntimeError("compare_job sets up the process group: one is set up already")
    on_gpu = device == "cuda"
    if on_gpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(
        "nccl" if on_gpu else "gloo", timeout=datetime.timedelta(seconds=timeout)
    )
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        try:
            mine: Report | RankRecord = record(rank, world)
        except Exception as exc:  # the others must not wait for this rank in vain
            mine = RankRecord(error=explain(exc))
        result = compare(mine, target=target)
        # No rank leaves while another may still be sending to it: a peer
        # gone mid-send aborts gloo's threads.
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return rank, result


WAIT_BEYOND_TIMEOUT = 120  # seconds for starting and profiling, beyond the collective timeout


@dataclass(frozen=True, slots=True)
class RankExit:
    """How one rank started by :func:`launch` ended.

    Attributes:
        rank: Its rank.
        code: Its exit status (negative: killed by that signal).
        stdout: What rank 0 wrote on stdout (the others' is dropped).
        stderr: What it wrote on stderr (rank 0's goes to this process's
            stderr as it comes, so it is empty here), or why it was stopped.
    """

    rank: int
    code: int
    stdout: str = ""
    stderr: str = ""


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def launch(command: Sequence[str], nproc: int, *, timeout: float = 300) -> tuple[RankExit, ...]:
    """Run ``command`` as ``nproc`` ranks on this machine, one process each, as torchrun would.

    Each process gets the environment torchrun gives its workers (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``,
    ``MASTER_PORT``). Rank 0's stdout is kept for its :class:`RankExit`, and
    its stderr goes straight to this process's; the other ranks' stdout is
    dropped and their stderr kept. A rank
    still running ``timeout`` plus two minutes after the start is killed;
    none is left running when this returns, also when it is interrupted.

    Args:
        command: The program and its arguments, the same for every rank.
        nproc: How many ranks.
        timeout: Seconds a collective of theirs may wait (the ranks' own).

    Returns:
        How each rank ended, by rank.
    """
    port = free_port()
    children = []
    for rank in range(nproc):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(nproc),
            "LOCAL_WORLD_SIZE": str(nproc),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        children.append(
            subprocess.Popen(
                list(command),
                env=env,
                stdout=subprocess.DEVNULL if rank else subprocess.PIPE,
                stderr=subprocess.PIPE if rank else None,
                text=True,
            )
        )
    exits = []
    try:
        for rank, child in enumerate(children):
            try:
                out, err = child.communicate(timeout=timeout + WAIT_BEYOND_TIMEOUT)
            except subprocess.TimeoutExpired:
                child.kill()
                out, err = child.communicate()
                err = f"did not finish within {timeout + WAIT_BEYOND_TIMEOUT} s"
            exits.append(RankExit(rank, child.returncode, out or "", err or ""))
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    return tuple(exits)


# -- what DDP left unreduced ------------------------------------------------------------


class Unreduced(NamedTuple):
    """What a DDP left unreduced, by parameter name in its order: ``replicas``, those whose
    copies differ across its ranks (an earlier step let a part through), and
    ``gradients``, those whose gradients differ once the recorded step's backward ended."""

    replicas: tuple[str, ...]
    gradients: tuple[str, ...]


def unreduced(recording: Recording) -> Unreduced:
    """Compare, across the ranks of the DDP that ran a recorded step, the copies of the
    parameters it registers and their gradients (:meth:`Recording.reduced_by_ddp`).

    DDP makes the copies equal when it is built and keeps them so by averaging every
    gradient over its ranks in backward: once the step's backward has ended, each rank
    holds the same copies and gradients. Each rank sends two numbers a tensor (its sum and
    its norm, reductions that make no copy of it) over DDP's own process group and learns
    their largest and smallest over the ranks: equal tensors give equal numbers, bit for
    bit. Call it on every rank of that group, after the step's backward. Nothing is
    compared, and nothing sent, where no DDP reduced the step (none ran it, ``no_sync()``,
    a comm hook that reduces otherwise).

    Raises:
        DdpWaitingError: If a DDP of the step had not finished reducing on this rank
            (``recording.ddps_unfinished()``): nothing is sent, since its all-reduces
            stopped part-way here.
    """
    waiting = recording.ddps_unfinished()
    if waiting:
        raise DdpWaitingError(waiting, ())
    reduced = recording.reduced_by_ddp()
    if reduced is None:
        return Unreduced((), ())
    group, params = reduced
    count = torch.tensor([len(params)], dtype=torch.float64)
    if _unequal(count, group).any() or not params:  # another rank registers others
        return Unreduced((), ())
    prints = torch.stack(
        [torch.cat([_fingerprint(p.detach()), _fingerprint(p.grad)]) for _, p in params]
    )
    unequal = _unequal(prints, group)
    names = [name for name, _ in params]
    replicas = unequal[:, :2].any(dim=1).tolist()
    gradients = unequal[:, 2:].any(dim=1).tolist()
    return Unreduced(
        tuple(n for n, differ in zip(names, replicas, strict=True) if differ),
        tuple(n for n, differ in zip(names, gradients, strict=True) if differ),
    )


def gradients_apart(recording: Recording, group: Any = None) -> tuple[str, ...]:
    """Under FSDP2, the trainable parameters that the recorded step gave a gradient on some
    ranks of ``group`` and not on others (:meth:`Recording.fsdp_gradients`), in
    ``parameters()`` order.

    FSDP2 reduces each unit's gradients as one buffer of the parameters that got one, so
    such parameters pair one rank's gradient of one with another rank's of another (with no
    error where the buffers' sizes agree). Each rank sends one number a parameter; a rank
    whose model has other parameters (a pipeline's other stage; told by their names' CRC)
    makes every rank send nothing more. Call it on every rank of the group, after the
    step's backward. Nothing is compared, and nothing sent, without FSDP2.
    """
    graded = recording.fsdp_gradients()
    if graded is None:
        return ()
    names = zlib.crc32("\n".join(name for name, _ in graded).encode())
    if _unequal(torch.tensor([len(graded), names]), group).any() or not graded:
        return ()
    apart = _unequal(torch.tensor([int(has) for _, has in graded]), group).tolist()
    return tuple(name for (name, _), differs in zip(graded, apart, strict=True) if differs)


def _unequal(values: torch.Tensor, group: Any) -> torch.Tensor:
    """Where ``values`` (of one shape on every rank of ``group``) differ across the ranks.

    Each rank sends them once, beside their negations, for the largest of each over the
    ranks: the largest and the smallest, equal where every rank's are. Call it on every
    rank of the group.
    """
    both = torch.cat([values, -values]).to(collective_device(group))
    dist.all_reduce(both, op=dist.ReduceOp.MAX, group=group)
    return (both[: len(values)] != -both[len(values) :]).cpu()


NONE = 1.7e308  # a gradient that is None; NaN and infinities get numbers of their own too


def _fingerprint(tensor: torch.Tensor | None) -> torch.Tensor:
    """Two numbers that equal tensors give alike on every rank: the sum and the norm."""
    if tensor is None:
        return torch.tensor([NONE, NONE], dtype=torch.float64)
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
    if local.is_sparse:
        local = local.coalesce().values()
    with torch.no_grad():
        numbers = torch.stack([local.sum(), torch.linalg.vector_norm(local)]).double()
    return torch.nan_to_num(numbers, nan=1.5e308, posinf=1.6e308, neginf=-1.6e308)
