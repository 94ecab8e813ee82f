"""Reading report files: a JSON document written by ``to_dict``, checked before use."""

from __future__ import annotations

import json
from pathlib import Path

from execorder.errors import ReportFileError, ReportVersionError, SchemaError, TimelineFileError
from execorder.report.records import SCHEMA_VERSION, Report


def load_report(path: str | Path) -> Report:
    """Read a report saved as JSON (``execorder trace --format json``, ``Report.to_dict``).

    Raises:
        ReportFileError: If the file is missing, is not JSON, is not a report,
            or has a ``schema_version`` this execorder does not read.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
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
