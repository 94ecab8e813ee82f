"""The alignment behind execorder diff: exact (a longest common subsequence), and fast."""

from __future__ import annotations

import itertools
import random

import pytest

from execorder.analysis.align import matches, opcodes


def _lcs_length(a: list[int], b: list[int]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) - 1, -1, -1):
        for j in range(len(b) - 1, -1, -1):
            table[i][j] = (
                table[i + 1][j + 1] + 1 if a[i] == b[j] else max(table[i + 1][j], table[i][j + 1])
            )
    return table[0][0]


def _replay(a: list[int], b: list[int]) -> list[int]:
    """b, rebuilt from a and the opcodes: the opcodes must say exactly how."""
    out: list[int] = []
    for tag, i1, i2, j1, j2 in opcodes(a, b):
        if tag == "equal":
            assert a[i1:i2] == b[j1:j2]
            out += a[i1:i2]
        elif tag in ("insert", "replace"):
            out += b[j1:j2]
    return out


@pytest.mark.parametrize("seed", range(300))
def test_it_keeps_a_longest_common_subsequence(seed: int) -> None:
    rng = random.Random(seed)
    alphabet = rng.choice([1, 2, 3, 6])  # few symbols: long runs of repeats
    a = [rng.randrange(alphabet) for _ in range(rng.randrange(0, 14))]
    b = [rng.randrange(alphabet) for _ in range(rng.randrange(0, 14))]
    pairs = matches(a, b)
    assert all(a[i] == b[j] for i, j in pairs)
    assert all(p < q for (p, _), (q, _) in itertools.pairwise(pairs))
    assert all(p < q for (_, p), (_, q) in itertools.pairwise(pairs))
    assert len(pairs) == _lcs_length(a, b)
    assert _replay(a, b) == b


@pytest.mark.timing
def test_a_cell_unrolled_many_times_aligns_in_near_linear_time() -> None:
    a = ["cell"] * 200_000
    b = [*a[:100_000], "extra", *a[100_000:]]
    del b[150_000]
    ops = [op for op in opcodes(a, b) if op[0] != "equal"]
    assert len(ops) <= 2  # one call added, one removed: nothing else
    kept = sum(i2 - i1 for tag, i1, i2, _, _ in opcodes(a, b) if tag == "equal")
    assert kept == 199_999
