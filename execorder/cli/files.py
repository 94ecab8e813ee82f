"""Writing what the command line produces, as a careful Unix tool does.

A regular file is replaced atomically (a temporary file beside it, renamed
over it), so a failure never leaves half a report; the temporary file goes
on every failure, Ctrl-C included. The file keeps its permissions, and a new
one gets the umask's. A symbolic link stays a link: its target is written.
Anything that is not a regular file (``/dev/null``, ``/dev/stdout``, a FIFO)
is written straight into, never replaced.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from execorder.cli.words import UsageError


def _is_regular_or_new(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return True


def check_writable(path: Path, *, option: str = "--output") -> None:
    """Fail before any work if a file could not be written to ``path``.

    Raises:
        UsageError: If ``path`` is a folder, its folder is missing, or it is not writable.
    """
    if path.is_dir():
        raise UsageError(f"{option} {path} is a directory")
    if not _is_regular_or_new(path):
        if not os.access(path, os.W_OK):
            raise UsageError(f"{option} {path}: permission denied")
        return
    target = Path(os.path.realpath(path))
    parent = target.parent
    if not parent.is_dir():
        raise UsageError(f"{option} {path}: folder {path.parent} does not exist")
    if not os.access(parent, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise UsageError(f"{option} {path}: permission denied")


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name the same file (through links), or would."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write(path: Path, text: str, *, option: str = "--output") -> None:
    """Write ``text`` to ``path``: atomically for a regular file, straight into anything else.

    Raises:
        UsageError: If it cannot be written (the message says why: disk full, ...).
    """
    try:
        if not _is_regular_or_new(path):
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text)
            return
        _replace(Path(os.path.realpath(path)), text)
    except OSError as exc:
        raise UsageError(f"{option} {path}: {exc.strerror or exc}") from None


def _replace(target: Path, text: str) -> None:
    """Write a temporary file beside ``target`` and rename it over ``target``."""
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
