"""A report as a timeline: Chrome's Trace Event JSON, which Perfetto and chrome://tracing open.

One complete event (``"ph": "X"``) per module call on the forward track,
perfectly nested; each parameter's first use as an instant event on a track
of its own; with a backward, the order of gradients on a third track; with
an FSDP plan, each unit's calls on a fourth. Times are microseconds: real
ones when forward was timed (``--timing``), else a logical clock (one tick
per call start or end), which the file's ``otherData`` says.
"""

from __future__ import annotations

from typing import Any

from execorder.analysis.sharding import FsdpPlan
from execorder.errors import PYTHON, Arg, Words
from execorder.report import Report, label
from execorder.report.memory import Phase

PID = 1
FORWARD, FIRST_USE, BACKWARD, UNITS = 1, 2, 3, 4
TRACKS = {
    FORWARD: "forward: module calls",
    FIRST_USE: "parameters: first use",
    BACKWARD: "backward: gradients, in order",
    UNITS: "FSDP units",
}


def spans(report: Report) -> list[tuple[float, float]]:
    """Each call's start and duration in microseconds, perfectly nested.

    Timed calls keep their real times, each clamped inside its parent (a
    clock's last digits must not make slices overlap); untimed ones get a
    logical clock: one tick for every call start and end, in order.
    """
    calls = report.modules
    if report.timing is not None:
        found: list[tuple[float, float]] = []
        for call, times in zip(calls, report.timing.calls, strict=True):
            start, end = times.start_us, times.start_us + times.total_us
            if call.parent is not None:
                outer_start, outer_length = found[call.parent]
                start = min(max(start, outer_start), outer_start + outer_length)
                end = min(max(end, start), outer_start + outer_length)
            found.append((start, end - start))
        return found
    starts: list[float] = [0.0] * len(calls)
    ends: list[float] = [0.0] * len(calls)
    open_calls: list[int] = []
    tick = 0
    for call in calls:
        while open_calls and calls[open_calls[-1]].depth >= call.depth:
            ends[open_calls.pop()] = tick
            tick += 1
        starts[call.index] = tick
        tick += 1
        open_calls.append(call.index)
    while open_calls:
        ends[open_calls.pop()] = tick
        tick += 1
    return [(s, e - s) for s, e in zip(starts, ends, strict=True)]


def _memory_counter(
    report: Report, found: list[tuple[float, float]], end: float
) -> list[dict[str, Any]]:
    """Bytes alive over the measured step, as a counter: forward at its calls' times, then
    backward and the optimizer's step after forward's end, a point after another."""
    memory = report.memory
    assert memory is not None
    step = max(end / max(len(memory.timeline), 1), 1.0)
    events, after = [], end
    last_start: dict[int, int] = {}
    for point in memory.timeline:
        if point.phase is Phase.FORWARD and point.call is not None and point.call < len(found):
            seen = last_start.get(point.call, 0)
            start, length = found[point.call]
            ts = start if not seen else start + length  # a call's start, then its end
            last_start[point.call] = seen + 1
        else:
            after += step
            ts = after
        events.append(
            {
                "name": "memory",
                "cat": "memory",
                "ph": "C",
                "ts": ts,
                "pid": PID,
                "args": {"bytes": point.bytes, "phase": point.phase.value},
            }
        )
    return events


def timeline(
    report: Report, *, plan: FsdpPlan | None = None, words: Words = PYTHON
) -> dict[str, Any]:
    """The Trace Event JSON object of a report (and of an FSDP plan made from it).

    ``words`` names the caller's arguments where the timeline says how to time a run.
    """
    found = spans(report)
    events: list[dict[str, Any]] = [
        {"ph": "M", "pid": PID, "name": "process_name", "args": {"name": report.target}}
    ]
    tracks = [FORWARD, FIRST_USE]
    for call, (start, length) in zip(report.modules, found, strict=True):
        own = [p for group in call.uses if group.module == call.name for p in group.params]
        events.append(
            {
                "name": label(call.name),
                "cat": "module",
                "ph": "X",
                "ts": start,
                "dur": length,
                "pid": PID,
                "tid": FORWARD,
                "args": {
                    "type": call.type,
                    "call": call.index,
                    "repeat": call.repeat,
                    "params": own,
                },
            }
        )
    for param in report.params:
        if param.first_call is None:
            continue
        events.append(
            {
                "name": param.name,
                "cat": "first use",
                "ph": "i",
                "s": "t",
                "ts": found[param.first_call][0],
                "pid": PID,
                "tid": FIRST_USE,
                "args": {
                    "module": param.first_module,
                    "call": param.first_call,
                    "status": str(param.status),
                },
            }
        )
    end = max((s + d for s, d in found), default=0.0)
    if report.backward:
        tracks.append(BACKWARD)
        step = 1.0 if report.timing is None else max(end / max(len(report.backward), 1), 1.0)
        for order, name in enumerate(report.backward):
            events.append(
                {
                    "name": name,
                    "cat": "gradient",
                    "ph": "i",
                    "s": "t",
                    "ts": end + (order + 1) * step,
                    "pid": PID,
                    "tid": BACKWARD,
                    "args": {"order": order, "logical": True},
                }
            )
    if report.memory is not None:
        events += _memory_counter(report, found, end)
    if plan is not None:
        tracks.append(UNITS)
        index_of = {m: i for i, u in enumerate(plan.units) for m in u.modules}
        # A group runs as one unit: from its first module's start to its last one's end.
        group_end: dict[int, float] = {}
        for call, (start, length) in zip(report.modules, found, strict=True):
            number = index_of.get(call.name)
            if number is not None and plan.units[number].grouped:
                group_end[number] = max(group_end.get(number, 0), start + length)
        drawn: set[int] = set()
        for call, (start, length) in zip(report.modules, found, strict=True):
            number = index_of.get(call.name)
            if number is None or number in drawn:
                continue
            unit = plan.units[number]
            if unit.grouped:
                drawn.add(number)
                length = group_end[number] - start
            events.append(
                {
                    "name": f"unit {number}: {label(unit.name)}",
                    "cat": "fsdp unit",
                    "ph": "X",
                    "ts": start,
                    "dur": length,
                    "pid": PID,
                    "tid": UNITS,
                    "args": {
                        "bytes": unit.bytes,
                        "gather_bytes": unit.gather_bytes,
                        "reshard_after_forward": unit.reshard_after_forward,
                        "forward_prefetch": list(plan.forward_prefetch.get(unit.name, ())),
                        "backward_prefetch": list(plan.backward_prefetch.get(unit.name, ())),
                    },
                }
            )
    for tid in tracks:
        events.append(
            {
                "ph": "M",
                "pid": PID,
                "tid": tid,
                "name": "thread_name",
                "args": {"name": TRACKS[tid]},
            }
        )
        events.append(
            {
                "ph": "M",
                "pid": PID,
                "tid": tid,
                "name": "thread_sort_index",
                "args": {"sort_index": tid},
            }
        )
    clock = (
        f"real: {report.timing.clock} wall time of each module call, in microseconds"
        if report.timing is not None
        else "logical: one tick per module call start or end; nothing was timed (run eagerly "
        f"with {words.arg(Arg.TIMING)} on cpu or cuda for real times)"
    )
    return {
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {
            "producer": "execorder",
            "target": report.target,
            "mode": str(report.mode),
            "clock": clock,
            "calls": len(report.modules),
            "gradient_track": "in order only: backward was not timed" if report.backward else "",
        },
    }
