"""Writing what the command line produces: checked before any work, written atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from execorder.cli.words import UsageError


def check_writable(path: Path, *, option: str = "--output") -> None:
    """Fail before any work if a file could not be written to ``path``.

    Raises:
        UsageError: If ``path`` is a folder, its folder is missing, or it is not writable.
    """
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UsageError(f"{option} {path} is a directory")
    if not parent.is_dir():
        raise UsageError(f"{option} {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"{option} {path}: permission denied")


def write(path: Path, text: str, *, option: str = "--output") -> None:
    """Write atomically, so a failure never leaves a half-written file.

    Raises:
        UsageError: If the file cannot be written.
    """
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        raise UsageError(f"{option} {path}: {exc.strerror or exc}") from None
