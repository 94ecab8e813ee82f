"""What a training step holds in memory, over the recorded order: frozen facts, no torch.

Made by :mod:`execorder.backends.memory` from a step run for real (on meta as
on a device): every storage an op makes, alive until the last reference to it
goes, sorted by what it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from execorder.errors import SchemaError
from execorder.report.kinds import Word
from execorder.report.reading import Fields


class MemoryKind(Word):
    """What a byte alive in a training step is."""

    PARAMETERS = "parameters"  # the model's parameters (under FSDP2: this rank's shards)
    GATHERED = "gathered"  # parameters FSDP2 all-gathered for a unit, until it reshards
    BUFFERS = "buffers"  # the model's buffers
    GRADIENTS = "gradients"  # the parameters' .grad
    OPTIMIZER = "optimizer"  # the optimizer's states (and its step's temporaries)
    ACTIVATIONS = "activations"  # tensors autograd saved in forward for backward
    TEMPORARIES = "temporaries"  # everything else an op made and something still holds


class Phase(Word):
    """Where in a training step a moment is."""

    FORWARD = "forward"
    BACKWARD = "backward"
    OPTIMIZER = "optimizer"  # the optimizer's step


@dataclass(frozen=True, slots=True)
class MemoryPoint:
    """Bytes alive at one moment of the step.

    Attributes:
        phase: Forward, backward or the optimizer's step.
        call: The module call (its ``#`` in the module order) running then:
            in forward, the innermost call; in backward, the call whose saved
            tensors backward was last using; None outside any.
        bytes: Bytes alive, of every kind.
    """

    phase: Phase
    call: int | None
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"phase": self.phase.value, "call": self.call, "bytes": self.bytes}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "point") -> MemoryPoint:
        fields = Fields(data, where)
        phase = fields.word("phase", Phase)
        return cls(phase, fields.get("call", int, type(None)), fields.get("bytes", int))


class Choice(Word):
    """A change to an FSDP2 plan that may bring one rank's step under its budget."""

    MORE_RANKS = "more-ranks"  # a larger world size (doubled until it fits): smaller shards
    PREFETCH_ONE = "prefetch-1"  # one unit gathered ahead, not more
    RESHARD = "reshard-after-forward"  # every unit frees its parameters after forward
    CHECKPOINT = "checkpoint"  # each unit's activations recomputed in backward
    ALL = "all"  # every change above that applies, together (tried when none fits alone)


@dataclass(frozen=True, slots=True)
class Alternative:
    """One choice, with the peak one rank's step has under it, measured again.

    Attributes:
        choice: What changes.
        peak_bytes: The peak with it.
        world_size: The world size with it.
    """

    choice: Choice
    peak_bytes: int
    world_size: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "choice": self.choice.value,
            "peak_bytes": self.peak_bytes,
            "world_size": self.world_size,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "alternative") -> Alternative:
        fields = Fields(data, where)
        choice = fields.word("choice", Choice)
        return cls(choice, fields.get("peak_bytes", int), fields.get("world_size", int))


@dataclass(frozen=True, slots=True)
class Memory:
    """The memory of a training step on one device (what one DDP replica holds).

    Attributes:
        optimizer: The optimizer stepped (``adamw``, ``sgd``) or ``none``.
        foreach: Its step ran torch's ``foreach`` implementation (its default
            on CUDA: each update made for all parameters at once, so its
            temporaries are as large as the parameters), not the loop over
            parameters (its default on CPU, and what a report without the
            field measured).
        peak_bytes: The most bytes alive at once, over two steps (the second
            has the optimizer's states).
        peak_at: When the peak fell: phase, module call, and bytes.
        peak_step: The step it fell in, 1 or 2.
        at_peak: The bytes alive at the peak, by kind.
        timeline: Bytes alive over the second step: at each module call's
            start and end in forward, each change of call in backward, and
            the end of each phase.
        device: Where the step ran (``meta`` measures without memory).
        assumed: On meta, a selection's size could not be known and was
            assumed to keep every element (a router's): a real step may hold
            less.
        budget_bytes: The memory the step must fit in, when one was given.
        peak_unit: Under an FSDP2 plan, the unit running at the peak (its
            name); None without a plan.
        world_size: The ranks the step's model was sharded over (1: none):
            the bytes are one rank's.
        alternatives: Over its budget under a plan, each change that may
            bring it under, with the peak measured again with it.
        ddp_buckets_bytes: On one device, what ``DistributedDataParallel``
            adds to a replica's step: its reducer's gradient buckets, as many
            bytes as the trainable parameters (each once), made when DDP is
            built and held from then on. None under a plan (FSDP2 has none)
            and in a report written before the field.
    """

    optimizer: str
    peak_bytes: int
    peak_at: MemoryPoint
    peak_step: int
    at_peak: Mapping[MemoryKind, int]
    timeline: tuple[MemoryPoint, ...] = ()
    device: str = "meta"
    assumed: bool = False
    budget_bytes: int | None = None
    peak_unit: str | None = None
    world_size: int = 1
    alternatives: tuple[Alternative, ...] = ()
    foreach: bool = False
    ddp_buckets_bytes: int | None = None

    def __post_init__(self) -> None:
        kinds = {MemoryKind(k): int(v) for k, v in self.at_peak.items()}
        object.__setattr__(self, "at_peak", MappingProxyType(kinds))

    @property
    def over_budget(self) -> bool:
        """Whether the peak exceeds the budget (False without one)."""
        return self.budget_bytes is not None and self.peak_bytes > self.budget_bytes

    @property
    def ddp_peak_bytes(self) -> int | None:
        """The peak of a DDP replica's step: the peak and DDP's buckets, alive throughout
        (with ``gradient_as_bucket_view=True`` the gradients are views of them: at most
        this). None where the buckets are not known."""
        if self.ddp_buckets_bytes is None:
            return None
        return self.peak_bytes + self.ddp_buckets_bytes

    def largest(self, count: int = 3) -> list[tuple[MemoryKind, int]]:
        """The kinds holding the most bytes at the peak, the largest first."""
        found = sorted(self.at_peak.items(), key=lambda item: -item[1])
        return [(kind, size) for kind, size in found[:count] if size]

    def to_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer,
            "foreach": self.foreach,
            "device": self.device,
            "assumed": self.assumed,
            "budget_bytes": self.budget_bytes,
            "peak_bytes": self.peak_bytes,
            "world_size": self.world_size,
            "peak_at": {**self.peak_at.to_dict(), "step": self.peak_step, "unit": self.peak_unit},
            "at_peak": {kind.value: size for kind, size in self.at_peak.items()},
            "timeline": [point.to_dict() for point in self.timeline],
            "alternatives": [a.to_dict() for a in self.alternatives],
            **(
                {"ddp_buckets_bytes": self.ddp_buckets_bytes}
                if self.ddp_buckets_bytes is not None
                else {}
            ),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Memory:
        """Read one back from :meth:`to_dict` output; a wrong field is a ``SchemaError``."""
        fields = Fields(data, "memory")
        peak = fields.get("peak_at", dict)
        try:
            at_peak = {MemoryKind(k): int(v) for k, v in fields.get("at_peak", dict).items()}
        except ValueError as exc:
            raise SchemaError(f"memory.at_peak: {exc}") from None
        return cls(
            optimizer=fields.get("optimizer", str),
            foreach=fields.get("foreach", bool, default=False),
            peak_bytes=fields.get("peak_bytes", int),
            peak_at=MemoryPoint.from_dict(peak, "memory.peak_at"),
            peak_step=int(peak.get("step", 2)),
            at_peak=at_peak,
            timeline=tuple(
                MemoryPoint.from_dict(p.data, p.where) for p in fields.objects("timeline")
            ),
            device=fields.get("device", str, default="meta"),
            assumed=fields.get("assumed", bool, default=False),
            budget_bytes=fields.get("budget_bytes", int, type(None), default=None),
            peak_unit=peak.get("unit") if isinstance(peak.get("unit"), str) else None,
            world_size=fields.get("world_size", int, default=1),
            alternatives=tuple(
                Alternative.from_dict(a.data, a.where)
                for a in fields.objects("alternatives", default=())
            ),
            ddp_buckets_bytes=fields.get("ddp_buckets_bytes", int, type(None), default=None),
        )
