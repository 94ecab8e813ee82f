"""Wall time of each module call, for ``--timing``: a clock the eager recorder reads.

On CPU each call's start and end are ``time.perf_counter_ns()``. On CUDA they
are events recorded on the current stream and read once, after the step, so
timing never makes the CPU wait for the GPU inside the step. Untimed
recording does not use this module at all.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from execorder.report import CallTime, Timing


class Clock:
    """Starts and ends of nested calls, in call order.

    Args:
        device: ``"cpu"`` or ``"cuda"``: where the timed work runs.
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self._starts: list[Any] = []
        self._ends: list[Any] = []
        self._open: list[int] = []

    def _now(self) -> Any:
        if self.device == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter_ns()

    def enter(self) -> None:
        """A call starts (inside the calls still open)."""
        self._open.append(len(self._starts))
        self._starts.append(self._now())
        self._ends.append(None)

    def exit(self) -> None:
        """The innermost open call ends."""
        self._ends[self._open.pop()] = self._now()

    def timing(self, parents: list[int | None]) -> Timing:
        """Each call's start (from the first), total and self time, in microseconds.

        Args:
            parents: Each call's enclosing call, by index (as the report has them).
        """
        if self.device == "cuda":
            torch.cuda.synchronize()
            first = self._starts[0]
            spans = [
                (first.elapsed_time(s) * 1e3, first.elapsed_time(e) * 1e3)
                for s, e in zip(self._starts, self._ends, strict=True)
            ]
        else:
            zero = self._starts[0]
            spans = [
                ((s - zero) / 1e3, (e - zero) / 1e3)
                for s, e in zip(self._starts, self._ends, strict=True)
            ]
        totals = [end - start for start, end in spans]
        children = [0.0] * len(spans)
        for index, parent in enumerate(parents):
            if parent is not None:
                children[parent] += totals[index]
        return Timing(
            clock=self.device,
            # Nanoseconds at most: what the JSON keeps, so a report reads back equal.
            calls=tuple(
                CallTime(round(start, 3), round(total, 3), round(max(0.0, total - inner), 3))
                for (start, _), total, inner in zip(spans, totals, children, strict=True)
            ),
        )
