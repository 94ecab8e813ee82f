"""Explaining DDP's "Parameter indices which did not receive grad" message."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from execorder.errors import IndicesError
from execorder.report import SCHEMA_VERSION, ParamInfo, ParamStatus, Report

_NUMBER = re.compile(r"\d+")


def parse_indices(text: str) -> tuple[int, ...]:
    """Read DDP's indices from ``"0 1 2 5"``, ``"0,1,2"`` or the pasted error line.

    Text up to the last colon is ignored, so the whole line
    ``Parameter indices which did not receive grad for rank 0: 0 1 2 5 6 7``
    works as it is.

    Raises:
        IndicesError: If there are no indices, or something else than numbers.
    """
    tail = text.rpartition(":")[2]
    tokens = tail.replace(",", " ").split()
    if not tokens:
        raise IndicesError(f"no parameter indices in {text!r}; expected e.g. '0 1 2 5'")
    bad = [t for t in tokens if not _NUMBER.fullmatch(t)]
    if bad:
        raise IndicesError(
            f"parameter indices must be numbers separated by spaces or commas, got {bad[0]!r}"
        )
    return tuple(int(t) for t in tokens)


@dataclass(frozen=True, slots=True)
class IndexExplanation:
    """One of DDP's indices, named, with what execorder predicted for it.

    ``status`` is the parameter's status in the report: ``USED`` means
    execorder expected it to get a gradient.
    """

    index: int
    param: ParamInfo

    @property
    def status(self) -> ParamStatus:
        return self.param.status

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.param.name,
            "aliases": list(self.param.aliases),
            "status": self.status.value,
            "first_module": self.param.first_module,
        }


@dataclass(frozen=True, slots=True)
class DdpExplanation:
    """DDP's indices translated, and how they compare with the prediction.

    Attributes:
        target: What was traced.
        indices: Each index DDP named, explained.
        not_named: Parameters execorder predicted to get no gradient that DDP
            did not name.
    """

    target: str
    indices: tuple[IndexExplanation, ...]
    not_named: tuple[ParamInfo, ...]

    @property
    def agrees(self) -> bool:
        """Whether DDP named exactly the parameters execorder predicted."""
        return not self.not_named and all(e.status is not ParamStatus.USED for e in self.indices)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "ddp-indices",
            "schema_version": SCHEMA_VERSION,
            "target": self.target,
            "indices": [e.to_dict() for e in self.indices],
            "predicted_not_named": [p.name for p in self.not_named],
            "agrees": self.agrees,
        }


def explain_indices(report: Report, indices: Sequence[int]) -> DdpExplanation:
    """Translate DDP's parameter indices into names, with execorder's verdict on each.

    DDP numbers the parameters that require grad in ``parameters()`` order
    (:meth:`Report.ddp_order`).

    Raises:
        IndicesError: If an index is beyond the model's trainable parameters.
    """
    order = report.ddp_order()
    out_of_range = [i for i in indices if i >= len(order)]
    if out_of_range:
        raise IndicesError(index=out_of_range[0], count=len(order))
    explained = [IndexExplanation(index, order[index]) for index in indices]
    named = {order[i].name for i in indices}
    not_named = tuple(p for p in report.no_grad() if p.name not in named)
    return DdpExplanation(report.target, tuple(explained), not_named)
