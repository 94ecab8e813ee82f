"""A minimal alignment of two sequences, in time near-linear when they mostly agree.

Myers' O(ND) difference algorithm with its linear-space refinement ("An
O(ND) Difference Algorithm and Its Variations", 1986): the time grows with
the length N times the number of differences D, never with N squared when D
is small, however often an item repeats (a cell unrolled 20,000 times is one
item 20,000 times, where ``difflib`` is quadratic). The alignment is exact:
it keeps a longest common subsequence, so it marks the fewest items added
and removed.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

Opcode = tuple[str, int, int, int, int]
"""``(tag, i1, i2, j1, j2)``, as ``difflib.SequenceMatcher.get_opcodes`` gives them."""


def matches(a: Sequence[Hashable], b: Sequence[Hashable]) -> list[tuple[int, int]]:
    """The index pairs ``(i, j)`` of a longest common subsequence of ``a`` and ``b``, in order."""
    out: list[tuple[int, int]] = []
    # Work items: a range of each, or a match to emit once the left part is done.
    work: list[tuple[int, int, int, int] | tuple[int, int]] = [(0, len(a), 0, len(b))]
    while work:
        item = work.pop()
        if len(item) == 2:
            out.append(item)
            continue
        a0, a1, b0, b1 = item
        while a0 < a1 and b0 < b1 and a[a0] == b[b0]:
            out.append((a0, b0))
            a0, b0 = a0 + 1, b0 + 1
        suffix = []
        while a0 < a1 and b0 < b1 and a[a1 - 1] == b[b1 - 1]:
            a1, b1 = a1 - 1, b1 - 1
            suffix.append((a1, b1))
        # Pushed in reverse: the suffix last, then the right part, the snake, the left part.
        work.extend(suffix)
        if a0 < a1 and b0 < b1:
            x, y, u, v = _middle_snake(a, b, a0, a1, b0, b1)
            work.append((a0 + u, a1, b0 + v, b1))
            work.extend((a0 + x + t, b0 + y + t) for t in reversed(range(u - x)))
            work.append((a0, a0 + x, b0, b0 + y))
    return out


def _middle_snake(
    a: Sequence[Hashable], b: Sequence[Hashable], a0: int, a1: int, b0: int, b1: int
) -> tuple[int, int, int, int]:
    """The middle snake of an optimal path through ``a[a0:a1]`` and ``b[b0:b1]``.

    Returns ``(x, y, u, v)``: the snake runs from ``(x, y)`` to ``(u, v)``,
    relative to ``(a0, b0)``. Both ranges are non-empty and differ at both ends.
    """
    n, m = a1 - a0, b1 - b0
    delta = n - m
    odd = delta % 2 == 1
    forward: dict[int, int] = {1: 0}
    backward: dict[int, int] = {1: 0}
    for d in range((n + m + 1) // 2 + 1):
        for k in range(-d, d + 1, 2):
            if k == -d or (k != d and forward[k - 1] < forward[k + 1]):
                x = forward[k + 1]
            else:
                x = forward[k - 1] + 1
            y = x - k
            start_x, start_y = x, y
            while x < n and y < m and a[a0 + x] == b[b0 + y]:
                x, y = x + 1, y + 1
            forward[k] = x
            overlaps = delta - (d - 1) <= k <= delta + (d - 1)
            if odd and overlaps and x + backward.get(delta - k, -1) >= n:
                return start_x, start_y, x, y
        for k in range(-d, d + 1, 2):
            if k == -d or (k != d and backward[k - 1] < backward[k + 1]):
                x = backward[k + 1]
            else:
                x = backward[k - 1] + 1
            y = x - k
            start_x, start_y = x, y
            while x < n and y < m and a[a1 - 1 - x] == b[b1 - 1 - y]:
                x, y = x + 1, y + 1
            backward[k] = x
            overlaps = -d <= delta - k <= d
            if not odd and overlaps and x + forward.get(delta - k, -1) >= n:
                return n - x, m - y, n - start_x, m - start_y
    raise AssertionError("no middle snake: the ranges cannot both be non-empty")


def opcodes(a: Sequence[Hashable], b: Sequence[Hashable]) -> list[Opcode]:
    """How to turn ``a`` into ``b``: ``equal``, ``delete``, ``insert`` and ``replace`` runs."""
    ops: list[Opcode] = []
    i = j = 0
    pairs = matches(a, b)
    index = 0
    while index <= len(pairs):
        mi, mj = pairs[index] if index < len(pairs) else (len(a), len(b))
        if i < mi and j < mj:
            ops.append(("replace", i, mi, j, mj))
        elif i < mi:
            ops.append(("delete", i, mi, j, j))
        elif j < mj:
            ops.append(("insert", i, i, j, mj))
        if index == len(pairs):
            break
        run = 1
        while index + run < len(pairs) and pairs[index + run] == (mi + run, mj + run):
            run += 1
        ops.append(("equal", mi, mi + run, mj, mj + run))
        i, j, index = mi + run, mj + run, index + run
    return ops
