"""execorder diff on a cell unrolled many times: Myers' alignment against difflib's.

The reports hold one module called N times (a recurrent cell unrolled over
N steps); the new one has a call added near the middle and one removed near
the end. difflib's SequenceMatcher, which execorder used before, is
quadratic in a repeated item; execorder's alignment is near-linear and
exact. Both run here, side by side, on the same reports.

    make bench            # or: python benchmarks/bench_diff.py
"""

from __future__ import annotations

import difflib
import time

from execorder.analysis import diff_reports
from execorder.report import Mode, ModuleCall, Report, Summary


def unrolled(steps: int, *, changed: bool) -> Report:
    """A report of a root calling one cell ``steps`` times (changed: one added, one removed)."""
    names = ["cell"] * steps
    if changed:
        names.insert(steps // 2, "extra")
        del names[int(steps * 0.9)]
    calls = [ModuleCall(0, "", "Net", 0, None, 0, (), ())]
    calls += [ModuleCall(i + 1, name, "Cell", 1, 0, i, (), ()) for i, name in enumerate(names)]
    summary = Summary(len(calls), 2, 0, 0, 0, 0)
    return Report("net", Mode.EAGER, {}, tuple(calls), (), (), summary)


def difflib_alignment(old: Report, new: Report) -> int:
    """What execorder did before: SequenceMatcher over the calls' (name, type)."""
    a = [(c.name, c.type) for c in old.modules]
    b = [(c.name, c.type) for c in new.modules]
    ops = difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes()
    return sum(i2 - i1 for tag, i1, i2, _, _ in ops if tag != "equal")


def timed(run: object) -> float:
    start = time.perf_counter()
    run()  # type: ignore[operator]
    return time.perf_counter() - start


def main() -> None:
    print("execorder diff of a cell unrolled N times, one call added and one removed:")
    for steps in (2_000, 20_000, 200_000):
        old, new = unrolled(steps, changed=False), unrolled(steps, changed=True)
        ours = timed(lambda old=old, new=new: diff_reports(old, new))
        counts = diff_reports(old, new).counts()
        assert counts["calls_added"] == counts["calls_removed"] == 1, counts
        if steps <= 20_000:
            theirs = timed(lambda old=old, new=new: difflib_alignment(old, new))
            print(
                f"  {steps:>7,} calls: execorder {ours:7.3f}s   difflib {theirs:7.3f}s   "
                f"(execorder / difflib = {ours / theirs:.5f}, {theirs / ours:,.0f}x faster)"
            )
        else:
            print(f"  {steps:>7,} calls: execorder {ours:7.3f}s   (difflib: not run, quadratic)")


if __name__ == "__main__":
    main()
