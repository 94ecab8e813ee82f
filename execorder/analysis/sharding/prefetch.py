"""Prefetch lists: which units each unit's start gathers ahead, from the order they ran."""

from __future__ import annotations

from collections.abc import Sequence


def prefetch_lists(
    sequence: Sequence[tuple[str, frozenset[str]]], count: int
) -> dict[str, tuple[str, ...]]:
    """Each unit's prefetch list: units among the next ``count`` to start after each of its starts.

    FSDP2 prefetches a unit's list each time that unit starts, so a static
    list is right only with targets that come next after each start; a unit
    that runs again later keeps only those. Units already running when it
    starts are gathered already, and never listed.
    """
    lists: dict[str, tuple[str, ...]] = {}
    for position, (unit, _) in enumerate(sequence):
        running = sequence[position][1]
        following: list[str] = []
        for other, _ in sequence[position + 1 :]:
            if len(following) == count:
                break
            if other != unit and other not in running and other not in following:
                following.append(other)
        if unit in lists:
            lists[unit] = tuple(t for t in lists[unit] if t in following)
        else:
            lists[unit] = tuple(following)
    return lists
