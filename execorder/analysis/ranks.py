"""Across ranks: what each rank ran, as a small record and a fixed-size digest, and where they part.

DDP and FSDP assume every rank runs the same modules in the same order and
gives the same parameters gradients. Each rank reduces its report to a
:class:`RankRecord` (its module calls by name, each parameter's status, its
gradient order) and that to a 48-byte digest; ranks with equal digests
behaved alike. :func:`compare_records` takes one record per group of alike
ranks and finds the first module call where the groups part, and the
parameters whose status differs. The exchange itself (over
torch.distributed) is :mod:`execorder.ranks`'s; nothing here needs
torch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from execorder.report import SCHEMA_VERSION, Report

PART_BYTES = 16
DIGEST_BYTES = 3 * PART_BYTES  # calls, statuses, gradient order


@dataclass(frozen=True, slots=True)
class RankRecord:
    """What one rank's forward (and backward) did, compactly.

    Attributes:
        calls: Its module calls in order, by qualified name.
        status: Each parameter's status (used, unused, dead), by name.
        backward: Parameters in the order their gradients were accumulated,
            when a backward ran.
        error: Why this rank has no report, when it has none.
    """

    calls: tuple[str, ...] = ()
    status: Mapping[str, str] = field(default_factory=dict)
    backward: tuple[str, ...] | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", MappingProxyType(dict(self.status)))

    def digest(self) -> bytes:
        """48 bytes: a hash of the calls, of the statuses, and of the gradient order."""
        parts = (
            "\n".join(self.calls) if self.error is None else f"error: {self.error}",
            "\n".join(f"{name}={status}" for name, status in sorted(self.status.items())),
            "none" if self.backward is None else "\n".join(self.backward),
        )
        return b"".join(
            hashlib.blake2b(part.encode(), digest_size=PART_BYTES).digest() for part in parts
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # MappingProxyType does not pickle; torch.distributed sends records pickled.
        return (RankRecord, (self.calls, dict(self.status), self.backward, self.error))


NO_USE_SEEN = "no parameter was seen used while forward ran"


def record_of(report: Report) -> RankRecord:
    """The record of one rank's report.

    A report in which no parameter was seen used (:attr:`Report.no_use_seen`)
    is an error record: ranks that saw nothing are not alike for it.
    """
    if report.no_use_seen:
        return RankRecord(error=NO_USE_SEEN)
    return RankRecord(
        calls=tuple(call.name for call in report.modules),
        status={p.name: str(p.status) for p in report.all_params()},
        backward=report.backward,
    )


@dataclass(frozen=True, slots=True)
class RankGroup:
    """Ranks that behaved alike (equal digests).

    Attributes:
        ranks: Their ranks, in order.
        calls: How many module calls they ran.
        error: Why they have no report, when they have none.
        compared: False for a group beyond the first ``max_groups``, whose
            record was not sent (it differs; how is not known).
    """

    ranks: tuple[int, ...]
    calls: int = 0
    error: str | None = None
    compared: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "ranks": list(self.ranks),
            "calls": self.calls,
            "error": self.error,
            "compared": self.compared,
        }


@dataclass(frozen=True, slots=True)
class Divergence:
    """Where the groups part: at a position in a sequence, what each group had there.

    Attributes:
        index: The position: a module call's index (``call``), or a place in
            the gradient order.
        by_group: What each group had there (a module's or a parameter's
            name), None where the group had ended.
    """

    index: int
    by_group: tuple[str | None, ...]


@dataclass(frozen=True, slots=True)
class StatusDifference:
    """A parameter whose status differs across groups: what DDP and FSDP trip on."""

    param: str
    by_group: tuple[str | None, ...]


@dataclass(frozen=True, slots=True)
class RankComparison:
    """Whether the ranks of a job ran the same forward, and if not, where they part.

    Attributes:
        target: What was run.
        world_size: How many ranks took part.
        groups: The groups of ranks that behaved alike, in order of their lowest rank.
        first_divergence: The first module call where the groups differ;
            None when they ran the same calls.
        status_differs: Parameters whose status (used, unused, dead) differs.
        backward_divergence: The first difference in gradient order (DDP's
            bucket order), when a backward ran.
        digest_bytes: Bytes each rank sent to find the groups.
    """

    target: str
    world_size: int
    groups: tuple[RankGroup, ...]
    first_divergence: Divergence | None = None
    status_differs: tuple[StatusDifference, ...] = ()
    backward_divergence: Divergence | None = None
    digest_bytes: int = DIGEST_BYTES

    @property
    def diverged(self) -> bool:
        """Whether some ranks behaved differently from others."""
        return len(self.groups) > 1

    @property
    def errors(self) -> tuple[RankGroup, ...]:
        """The groups of ranks that could not record a report."""
        return tuple(g for g in self.groups if g.error is not None)

    @property
    def agree(self) -> bool:
        """Whether every rank made a report and all behaved alike.

        Not :attr:`diverged` alone: ranks that all failed the same way (or
        all saw no parameter used) form one group, and do not agree.
        """
        return not self.diverged and not self.errors

    def to_dict(self) -> dict[str, Any]:
        first, back = self.first_divergence, self.backward_divergence
        return {
            "kind": "ranks",
            "schema_version": SCHEMA_VERSION,
            "target": self.target,
            "diverged": self.diverged,
            "world_size": self.world_size,
            "groups": [g.to_dict() for g in self.groups],
            "first_divergence": None
            if first is None
            else {"call": first.index, "by_group": list(first.by_group)},
            "status_differs": [
                {"param": d.param, "by_group": list(d.by_group)} for d in self.status_differs
            ],
            "backward_divergence": None
            if back is None
            else {"index": back.index, "by_group": list(back.by_group)},
            "digest_bytes": self.digest_bytes,
        }


def group_ranks(digests: Sequence[bytes]) -> list[tuple[int, ...]]:
    """Ranks with equal digests, grouped, in order of their lowest rank."""
    groups: dict[bytes, list[int]] = {}
    for rank, digest in enumerate(digests):
        groups.setdefault(digest, []).append(rank)
    return [tuple(ranks) for ranks in groups.values()]


def _first_difference(sequences: Sequence[Sequence[str] | None]) -> Divergence | None:
    present = [s for s in sequences if s is not None]
    if len(present) < 2:
        return None
    longest = max(len(s) for s in present)
    for index in range(longest):
        seen = {s[index] if index < len(s) else None for s in present}
        if len(seen) > 1:
            return Divergence(
                index,
                tuple(None if s is None or index >= len(s) else s[index] for s in sequences),
            )
    return None


def compare_records(
    groups: Sequence[tuple[tuple[int, ...], RankRecord | None]], *, world_size: int, target: str
) -> RankComparison:
    """Compare one record per group of alike ranks.

    Args:
        groups: Each group's ranks and the record of one of them (None for a
            group whose record was not sent: it is listed, not compared), in
            order of their lowest rank.
        world_size: How many ranks took part.
        target: What was run.
    """
    # Groups without a report (not sent, or failed) are left out of every comparison.
    usable = [r if r is not None and r.error is None else None for _, r in groups]
    ok = [r for r in usable if r is not None]
    status_differs = []
    for name in dict.fromkeys(name for r in ok for name in r.status):
        statuses = tuple(None if r is None else r.status.get(name) for r in usable)
        if len({r.status.get(name) for r in ok}) > 1:
            status_differs.append(StatusDifference(name, statuses))
    backward = [None if r is None else r.backward for r in usable]
    return RankComparison(
        target=target,
        world_size=world_size,
        groups=tuple(
            RankGroup(ranks, compared=False)
            if record is None
            else RankGroup(ranks, len(record.calls), record.error)
            for ranks, record in groups
        ),
        first_divergence=_first_difference([None if r is None else r.calls for r in usable]),
        status_differs=tuple(status_differs),
        backward_divergence=_first_difference(backward)
        if all(r.backward is not None for r in ok)
        else None,
    )
