"""Writing a command's document (JSON, table, Markdown, tree, timeline) to stdout or a file."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from execorder.cli.options import OutputFormat
from execorder.cli.session import say
from execorder.cli.words import CLI, UsageError
from execorder.output import files


def emit(
    doc: Any,
    view: Callable[[], Any],
    fmt: OutputFormat,
    output: Path | None,
    *,
    kind: str,
    tree: Callable[[], Any] | None = None,
    timeline: Callable[[], Any] | None = None,
    data: Callable[[], Any] | None = None,
) -> None:
    """Write a report, diff, sweep or DDP explanation (``kind``) in the chosen format.

    Files are UTF-8; stdout gets what its encoding can write (ASCII stand-ins
    on an ASCII or code-page console). ``tree`` and ``timeline`` make the
    tree view and the Trace Event JSON, for what has them; ``data`` the
    JSON data, when it is not ``doc.to_dict()``.
    """
    encoding = "utf-8" if output else (getattr(sys.stdout, "encoding", None) or "utf-8")
    if fmt is OutputFormat.tree:
        if tree is None:
            raise UsageError(f"--format tree applies to trace and fsdp, not to a {kind}")
        view = tree
    if fmt is OutputFormat.json:
        text = json.dumps(data() if data else doc.to_dict(), indent=2) + "\n"
    elif fmt is OutputFormat.perfetto:
        if timeline is None:
            raise UsageError(f"--format perfetto applies to trace and fsdp, not to a {kind}")
        text = json.dumps(timeline()) + "\n"
    elif fmt is OutputFormat.markdown:
        from execorder.output import markdown, terminal

        text = terminal.encodable(markdown.draw(view()), encoding)
    else:
        from rich.console import Console

        from execorder.output import terminal

        renderable = terminal.draw(view())
        console = Console(highlight=False)
        if output is None and console.is_terminal and console.encoding.startswith("utf"):
            # Too narrow a terminal wraps a table's lines rather than cutting them.
            console.print(renderable, crop=False)
            return
        width = 120 if output else console.width
        text = terminal.plain_text(renderable, width=width, encoding=encoding)
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        files.write(output, text)
        say(f"execorder: {kind} written to {output}")
        if fmt is OutputFormat.perfetto:
            say("execorder: open it at https://ui.perfetto.dev (or chrome://tracing)")


# Each imported when drawn: JSON needs none of them.


def report_view_of(report: Any, **opts: Any) -> Callable[[], Any]:
    def view() -> Any:
        from execorder.output.views import report_view

        return report_view(report, words=CLI, **opts)

    return view


def tree_view_of(report: Any, **opts: Any) -> Callable[[], Any]:
    def view() -> Any:
        from execorder.output.views import tree_view

        return tree_view(report, words=CLI, **opts)

    return view


def timeline_of(report: Any, plan: Any = None) -> Callable[[], Any]:
    def view() -> Any:
        from execorder.output.perfetto import timeline

        return timeline(report, plan=plan, words=CLI)

    return view
