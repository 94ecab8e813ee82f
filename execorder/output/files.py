"""Writing a rendered report, plan or timeline to a file, as a careful Unix tool does.

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

from execorder.errors import Arg, OutputFileError


def _is_regular_or_new(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return True


def check_writable(path: Path, *, arg: Arg = Arg.OUTPUT) -> None:
    """Fail before any work if a file could not be written to ``path``.

    Args:
        path: Where the file would go.
        arg: The argument that named it, for the message.

    Raises:
        OutputFileError: If ``path`` is a folder, its folder is missing, or it
            is not writable.
    """
    if path.is_dir():
        raise OutputFileError(str(path), " is a directory", arg=arg)
    if not _is_regular_or_new(path):
        if not os.access(path, os.W_OK):
            raise OutputFileError(str(path), ": permission denied", arg=arg)
        return
    target = Path(os.path.realpath(path))
    parent = target.parent
    if not parent.is_dir():
        raise OutputFileError(str(path), f": folder {path.parent} does not exist", arg=arg)
    if not os.access(parent, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise OutputFileError(str(path), ": permission denied", arg=arg)


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


def write(path: Path, text: str, *, arg: Arg = Arg.OUTPUT) -> None:
    """Write ``text`` to ``path``: atomically for a regular file, straight into anything else.

    Args:
        path: The file.
        text: What to write, as UTF-8.
        arg: The argument that named the file, for the message.

    Raises:
        OutputFileError: If it cannot be written (the message says why: disk full, ...).
    """
    try:
        if not _is_regular_or_new(path):
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text)
            return
        _replace(Path(os.path.realpath(path)), text)
    except OSError as exc:
        raise OutputFileError(str(path), f": {exc.strerror or exc}", arg=arg) from None


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
