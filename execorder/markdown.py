"""GitHub-flavoured Markdown renderings, ready to paste into a pull-request comment.

Long lists fold into ``<details>`` sections; findings stay open.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from execorder.ddp import DdpExplanation
from execorder.diff import CallChange, Gap, ReportDiff
from execorder.report import ParamInfo, Report
from execorder.sweep import NEVER, SOME, SweepReport

ROOT = "(root)"
FOLD_AFTER = 20


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _code(text: object) -> str:
    return f"`{_cell(text)}`" if str(text) else ""


def _table(
    header: Sequence[str], rows: Iterable[Sequence[object]], right: Sequence[int] = ()
) -> str:
    align = ["--:" if i in right else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _section(title: str, body: str, *, rows: int, fold: bool | None = None) -> str:
    """A titled block, folded into <details> when long (or when asked)."""
    if fold if fold is not None else rows > FOLD_AFTER:
        return f"<details>\n<summary>{title}</summary>\n\n{body}\n\n</details>"
    return f"**{title}**\n\n{body}"


def _shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _name(param: ParamInfo) -> str:
    aliases = f" (= {', '.join(param.aliases)})" if param.aliases else ""
    return f"{_code(param.name)}{aliases}"


def _label(name: str) -> str:
    return name or ROOT


def _status(param: ParamInfo) -> str:
    flags = [
        word
        for flag, word in (
            (param.dead, "dead"),
            (not param.requires_grad, "frozen"),
            (param.assumed, "assumed"),
        )
        if flag
    ]
    return ", ".join(flags)


def report_markdown(report: Report) -> str:
    """A trace report: summary, findings open, orders folded."""
    rows: list[Sequence[object]]
    s = report.summary
    verdict = (
        f"❌ fails: {s.params_no_grad} trainable "
        + ("parameter gets" if s.params_no_grad == 1 else "parameters get")
        + " no gradient"
        if s.params_no_grad
        else "✅ every trainable parameter gets a gradient"
    )
    facts = [
        ("concrete args", ", ".join(f"`{k}={v!r}`" for k, v in report.concrete_args.items())),
        ("inputs", ", ".join(f"`{k}={v}`" for k, v in report.inputs.items())),
        ("module calls", f"{s.calls:,} ({s.modules:,} distinct modules)"),
        ("parameters used", f"{s.params_used:,} of {s.params_total:,}"),
        ("unused", f"{s.params_unused:,} ({s.numel_unused:,} elements, {s.unused_fraction:.1%})"),
        ("dead (used, no gradient)", f"{s.params_dead:,}"),
        ("frozen", f"{s.params_frozen:,}"),
        ("external uses", f"{s.external_uses:,}"),
        ("DDP check", verdict),
    ]
    parts = [
        f"### execorder: {_code(report.target)} ({report.mode} trace)",
        _table(["", ""], [(k, v) for k, v in facts if v not in ("", "0")]),
    ]
    if report.unused:
        rows = [
            (_name(p), _shape(p.shape), f"{p.numel:,}", _label(p.owner), _status(p))
            for p in report.unused
        ]
        body = _table(["parameter", "shape", "numel", "owner", "status"], rows, right=(2,))
        parts.append(_section(f"Unused parameters ({len(rows)})", body, rows=len(rows)))
    if report.dead:
        rows = [
            (
                _name(p),
                _shape(p.shape),
                f"{p.numel:,}",
                f"{_label(p.first_module or '')} (#{p.first_call})",
            )
            for p in report.dead
        ]
        body = _table(["parameter", "shape", "numel", "first used by"], rows, right=(2,))
        parts.append(_section(f"Dead parameters: no gradient ({len(rows)})", body, rows=len(rows)))
    if report.external:
        rows = [
            (_code(u.param), _label(u.owner), f"{_label(u.module)} (#{u.call})")
            for u in report.external
        ]
        body = _table(["parameter", "owner", "used by"], rows)
        parts.append(_section(f"External uses ({len(rows)})", body, rows=len(rows)))
    calls = [
        (
            c.index,
            "&nbsp;&nbsp;" * c.depth
            + _code(_label(c.name))
            + (f" (call {c.call + 1})" if c.call else ""),
            c.type,
        )
        for c in report.modules
    ]
    parts.append(
        _section(
            f"Module forward order ({len(calls)} calls)",
            _table(["#", "module", "type"], calls, right=(0,)),
            rows=len(calls),
            fold=True,
        )
    )
    params = [
        (
            i,
            _name(p),
            _shape(p.shape),
            f"{p.numel:,}",
            f"{_label(p.first_module or '')} (#{p.first_call})",
            _status(p),
        )
        for i, p in enumerate(report.params)
    ]
    parts.append(
        _section(
            f"Parameter forward order ({len(params)} used)",
            _table(
                ["#", "parameter", "shape", "numel", "first used by", "status"],
                params,
                right=(0, 3),
            ),
            rows=len(params),
            fold=True,
        )
    )
    if report.backward is not None:
        forward = {p.name: i for i, p in enumerate(report.params)}
        rows = [(i, _code(n), forward.get(n, "")) for i, n in enumerate(report.backward)]
        parts.append(
            _section(
                f"Backward order ({len(rows)} gradients)",
                _table(["#", "parameter", "forward #"], rows, right=(0, 2)),
                rows=len(rows),
                fold=True,
            )
        )
    return "\n\n".join(parts) + "\n"


def _diff_line(line: CallChange | Gap) -> str:
    if isinstance(line, Gap):
        return f"  … {line.count} unchanged call{'s' if line.count != 1 else ''}"
    sign = {"=": " ", "-": "-", "+": "+"}[line.op]
    moved = "  (moved)" if line.moved else ""
    return f"{sign} {'  ' * line.depth}{_label(line.name)}  [{line.type}]{moved}"


def diff_markdown(diff: ReportDiff) -> str:
    """A report diff: verdict, notes, the aligned module diff, parameter changes."""
    rows: list[Sequence[object]]
    if diff.equivalent:
        head = f"### execorder diff: ✅ no change ({_code(diff.new_target)})"
    else:
        counts = diff.counts()
        summary = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items() if v)
        head = f"### execorder diff: ⚠️ {summary} ({_code(diff.new_target)})"
    parts = [head]
    parts += [f"> {note}" for note in diff.notes]
    if diff.calls_changed:
        lines = "\n".join(_diff_line(line) for line in diff.calls)
        parts.append(
            _section("Module forward order", f"```diff\n{lines}\n```", rows=len(diff.calls))
        )
    if diff.params:
        rows = [(_code(p.name), p.what, p.old or "", p.new or "") for p in diff.params]
        parts.append(
            _section(
                f"Parameter changes ({len(rows)})",
                _table(["parameter", "change", "old", "new"], rows),
                rows=len(rows),
            )
        )
    if diff.external_added or diff.external_removed:
        rows = [("added", u) for u in diff.external_added]
        rows += [("removed", u) for u in diff.external_removed]
        parts.append(_section("External uses", _table(["", "use"], rows), rows=len(rows)))
    return "\n\n".join(parts) + "\n"


def _combo(args: Mapping[str, object]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items())


def sweep_markdown(sweep: SweepReport) -> str:
    """A sweep: combinations, then parameters by status, branch-dependent first."""
    rows: list[Sequence[object]]
    parts = [f"### execorder sweep: {_code(sweep.target)}"]
    combos = [
        (i, _code(_combo(c.args)), c.calls, c.params_used, c.params_no_grad)
        for i, c in enumerate(sweep.combinations)
    ]
    parts.append(
        _table(
            ["#", "combination", "calls", "params used", "no gradient"], combos, right=(0, 2, 3, 4)
        )
    )
    some = sweep.by_status(SOME)
    if some:
        rows = [
            (
                _code(p.name),
                ", ".join(f"#{i}" for i in p.used_in),
                ", ".join(f"#{i}" for i in p.grad_in) or "none",
            )
            for p in some
        ]
        parts.append(
            _section(
                f"Branch-dependent parameters: used in some combinations only ({len(rows)})",
                _table(["parameter", "used in", "gets a gradient in"], rows),
                rows=len(rows),
            )
        )
    else:
        parts.append("No branch-dependent parameters: every combination uses the same ones.")
    never = sweep.by_status(NEVER)
    if never:
        rows = [(_code(p.name),) for p in never]
        parts.append(
            _section(f"Never used ({len(rows)})", _table(["parameter"], rows), rows=len(rows))
        )
    always = [p for p in sweep.params if p.status not in (SOME, NEVER)]
    rows = [(_code(p.name), ", ".join(f"#{i}" for i in p.grad_in) or "none") for p in always]
    parts.append(
        _section(
            f"Always used ({len(rows)})",
            _table(["parameter", "gets a gradient in"], rows),
            rows=len(rows),
            fold=True,
        )
    )
    return "\n\n".join(parts) + "\n"


def ddp_markdown(explanation: DdpExplanation) -> str:
    """DDP's indices, named, with execorder's verdict on each."""
    words = {
        "dead": "dead (no use reaches an output)",
        "unused": "unused",
        "used": "⚠️ used: expected a gradient",
    }
    rows = [(e.index, _name(e.param), words[e.status]) for e in explanation.indices]
    parts = [
        f"### DDP parameter indices for {_code(explanation.target)}",
        _table(["index", "parameter", "execorder says"], rows, right=(0,)),
    ]
    if explanation.agrees:
        parts.append("✅ execorder predicted exactly these parameters.")
    elif explanation.not_named:
        names = ", ".join(_code(p.name) for p in explanation.not_named)
        parts.append(f"execorder also predicts no gradient for: {names}")
    return "\n\n".join(parts) + "\n"
