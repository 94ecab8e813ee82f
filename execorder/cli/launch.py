"""Start the ranks of `execorder ranks --nproc N` (execorder.ranks.launch); say how they ended.

Each child runs the same command without ``--nproc``. Rank 0 writes the
result and its exit code is the command's; the other ranks' output is kept
back unless one of them fails.
"""

from __future__ import annotations

import sys

from execorder.cli.session import say
from execorder.cli.words import EXIT_ERROR


def launch(nproc: int, args: list[str], timeout: int) -> int:
    """Run ``execorder ranks ARGS`` as ``nproc`` ranks; the exit code to leave with."""
    from execorder.ranks import launch as start

    exits = start([sys.executable, "-m", "execorder", "ranks", *args], nproc, timeout=timeout)
    first, others = exits[0], exits[1:]
    failed = [e for e in others if e.code not in (0, 1)]
    for rank in failed:
        lines = [line for line in rank.stderr.splitlines() if line.strip()]
        if not lines and rank.code == EXIT_ERROR == first.code:
            continue  # a rank's error is in rank 0's result: it said it already
        said = f": {' | '.join(lines[-3:])}" if lines else " (it wrote nothing)"
        say(f"execorder: rank {rank.rank} failed (exit {rank.code}){said}")
    if failed and first.code in (0, 1):
        return EXIT_ERROR
    return first.code
