"""Start the ranks of ``execorder ranks --nproc N``: one process each, on this machine.

Each child runs the same command without ``--nproc``, with the environment
torchrun gives its workers (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``). Rank 0 writes the result and its exit
code is the command's; the other ranks' output is kept back unless one of
them fails.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from execorder.cli.session import say
from execorder.cli.words import EXIT_ERROR

WAIT_BEYOND_TIMEOUT = 120  # seconds for starting and profiling, beyond the collective timeout


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def launch(nproc: int, args: list[str], timeout: int) -> int:
    """Run ``execorder ranks ARGS`` as ``nproc`` ranks; the exit code to leave with."""
    port = free_port()
    children = []
    for rank in range(nproc):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(nproc),
            "LOCAL_WORLD_SIZE": str(nproc),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        # Rank 0's result comes back through this process's stdout (whatever it
        # is); its stderr (progress, notes) goes straight to the terminal.
        children.append(
            subprocess.Popen(
                [sys.executable, "-m", "execorder", "ranks", *args],
                env=env,
                stdout=subprocess.DEVNULL if rank else subprocess.PIPE,
                stderr=subprocess.PIPE if rank else None,
                text=True,
            )
        )
    codes, errors = [], []
    try:
        for rank, child in enumerate(children):
            try:
                out, err = child.communicate(timeout=timeout + WAIT_BEYOND_TIMEOUT)
            except subprocess.TimeoutExpired:
                child.kill()
                out, err = child.communicate()
                err = f"did not finish within {timeout + WAIT_BEYOND_TIMEOUT} s"
            if rank == 0 and out:
                sys.stdout.write(out)
                sys.stdout.flush()
            codes.append(child.returncode)
            errors.append(err or "")
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    failed = [r for r, code in enumerate(codes) if r and code not in (0, 1)]
    for rank in failed:
        lines = [line for line in errors[rank].splitlines() if line.strip()]
        if not lines and codes[rank] == EXIT_ERROR == codes[0]:
            continue  # a rank's error is in rank 0's result: it said it already
        said = f": {' | '.join(lines[-3:])}" if lines else " (it wrote nothing)"
        say(f"execorder: rank {rank} failed (exit {codes[rank]}){said}")
    if failed and codes[0] in (0, 1):
        return EXIT_ERROR
    return codes[0]
