"""Writing a rendered report, plan or timeline to a file, as a careful Unix tool does.

A regular file is replaced atomically (a temporary file beside it, renamed
over it), so a failure never leaves half a report; the temporary file goes
on every failure, Ctrl-C included. The file keeps its permissions, and a new
one gets the umask's. A symbolic link stays a link: its target is written.
Anything that is not a regular file (``/dev/null``, ``/dev/stdout``, a FIFO)
is written straight into, never replaced. A file the run reads is never
written over: the source of a module it imported (the model's own file),
nor what the caller names as read (a report being compared).
"""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from execorder.errors import Arg, OutputFileError


def _is_regular_or_new(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return True


def check_writable(
    path: Path, *, arg: Arg = Arg.OUTPUT, reads: Mapping[Path, str] | None = None
) -> None:
    """Fail before any work if a file could not be written to ``path``, or must not be.

    Args:
        path: Where the file would go.
        arg: The argument that named it, for the message.
        reads: Files the run reads, each with what it is for a person ("the
            model's file"): ``path`` may be none of them.

    Raises:
        OutputFileError: If ``path`` is a folder, its folder is missing, it
            is not writable, or it is one of ``reads``. (Python source the run
            imports is refused by :func:`write`, once it is known.)
    """
    for read, what in (reads or {}).items():
        if same_file(path, read):
            raise OutputFileError(str(path), _kept(what), arg=arg)
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


def _kept(what: str) -> str:
    return f" is {what}, which writing would replace; write elsewhere"


def imported_from(path: Path) -> str | None:
    """The module this process imported from ``path`` (through links), if any."""
    try:
        mine = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(mine.st_mode):
        return None
    for name, module in list(sys.modules.items()):
        source = getattr(module, "__file__", None)
        if not isinstance(source, str):
            continue
        try:
            theirs = os.stat(source)
        except OSError:
            continue
        if (theirs.st_dev, theirs.st_ino) == (mine.st_dev, mine.st_ino):
            return name
    return None


def _check_not_source(path: Path, arg: Arg) -> None:
    if imported_from(path) is not None:
        raise OutputFileError(str(path), _kept("Python source this run imported"), arg=arg)


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
        OutputFileError: If it cannot be written (the message says why: disk full, ...),
            or it is the source of a module this process imported (the model's file).
    """
    _check_not_source(path, arg)
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
