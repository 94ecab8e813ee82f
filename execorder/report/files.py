"""Reading report files: a JSON document written by ``to_dict``, checked before use."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from execorder.errors import ReportFileError, ReportVersionError, SchemaError, TimelineFileError
from execorder.report.records import SCHEMA_VERSION, Report
from execorder.spelling import size_text

LARGEST = 10**9
"""Bytes of the largest file read as a report. The largest report execorder
writes is a few megabytes (DeepSeek-V3's: 4.3 MB); reading a file holds
several times its size in memory, so a checkpoint or a dataset given by
mistake is refused rather than read."""

_PEEK = 4096  # bytes read first, to tell binary data from JSON before reading the rest


def _read(path: Path) -> str:
    """The file's text, unless it cannot be a report: larger than any, or binary data."""
    with open(path, "rb") as handle:
        info = os.fstat(handle.fileno())
        if stat.S_ISREG(info.st_mode) and info.st_size > LARGEST:
            raise ReportFileError(
                f"{path}: not a report ({size_text(info.st_size)}, larger than any report; "
                f"at most {size_text(LARGEST)} is read)"
            )
        head = handle.read(_PEEK)
        if not head.lstrip(b" \t\r\n\xef\xbb\xbf").startswith(b"{") and _binary(head):
            raise ReportFileError(f"{path}: not a report (binary data, not JSON)")
        data = head + handle.read(LARGEST + 1 - len(head))
    if len(data) > LARGEST:  # a pipe or a device, whose size was not known
        raise ReportFileError(f"{path}: not a report (more than {size_text(LARGEST)})")
    return data.decode("utf-8")


def _binary(head: bytes) -> bool:
    """Whether the first bytes of a file are not text (a NUL, or not UTF-8)."""
    if b"\0" in head:
        return True
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start < len(head) - 3  # not just a character cut at the end
    return False


def report_written(path: str | Path) -> bool:
    """Whether ``path`` holds a report execorder wrote, of any schema version (a baseline
    that may be written over), read as :func:`load_report` reads it."""
    try:
        data = json.loads(_read(Path(path)))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, ReportFileError):
        return False
    return (
        isinstance(data, dict)
        and data.get("kind", "report") == "report"
        and "schema_version" in data
        and "traceEvents" not in data
    )


def load_report(path: str | Path) -> Report:
    """Read a report saved as JSON (``execorder trace --format json``, ``Report.to_dict``).

    Raises:
        ReportFileError: If the file is missing, is not JSON, is not a report,
            or has a ``schema_version`` this execorder does not read.
    """
    path = Path(path)
    try:
        text = _read(path)
    except FileNotFoundError:
        raise ReportFileError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportFileError(f"{path}: cannot read it ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportFileError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise ReportFileError(f"{path}: not a report (its JSON nests too deeply to read)") from None
    if isinstance(data, dict) and "traceEvents" in data:
        raise TimelineFileError(str(path))
    if not isinstance(data, dict) or data.get("kind", "report") != "report":
        kind = data.get("kind") if isinstance(data, dict) else type(data).__name__
        raise ReportFileError(f"{path}: not a trace report (kind {kind!r})")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ReportVersionError(str(path), data.get("schema_version"), SCHEMA_VERSION)
    try:
        return Report.from_dict(data)
    except SchemaError as exc:
        raise ReportFileError(f"{path}: {exc}") from None
