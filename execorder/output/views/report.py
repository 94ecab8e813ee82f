"""The view of one report: the summary, the orders, the findings."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from execorder.errors import PYTHON, Arg, Words
from execorder.output.document import (
    Block,
    Cell,
    Column,
    Document,
    Fold,
    Message,
    Row,
    Severity,
    Span,
    Table,
    Tone,
    cell,
    code,
    label,
    plural,
)
from execorder.output.views.common import (
    FIXED,
    MADE,
    NAME,
    NUMBER,
    OWN_PARAMS_SHOWN,
    TEXT,
    cut_rows,
    fact,
    first_use,
    made_inputs,
    memory_table,
    param_cell,
    status_cell,
    time_text,
    warn_if,
)
from execorder.report import (
    Assumption,
    AssumptionKind,
    Category,
    DdpBuilt,
    Mode,
    ModuleCall,
    ParamInfo,
    Report,
    shape_text,
)
from execorder.spelling import args_text, ddps_named, listed, non_reentrant, size_text


def report_view(
    report: Report,
    *,
    depth: int | None = None,
    max_rows: int | None = None,
    words: Words = PYTHON,
) -> Document:
    """Everything a trace found: the summary first, then findings, then the orders.

    Args:
        report: The report.
        depth: Leave out module calls nested deeper than this.
        max_rows: At most this many rows per table (None or 0: all).
        words: How to name the caller's arguments (Python's keywords by
            default; the command line passes its flags).
    """
    blocks: list[Block] = [
        _summary(report, words),
        *([_memory(report)] if report.memory is not None else []),
        _modules(report.modules, depth=depth, max_rows=max_rows, words=words),
        _param_order(report.params, max_rows=max_rows, words=words),
        _unused(report.unused, max_rows=max_rows, words=words),
        _dead(report.dead, max_rows=max_rows, words=words),
    ]
    if report.assumptions:
        blocks += _assumptions(report, max_rows=max_rows, words=words)
    if report.external:
        blocks.append(_external(report))
    if report.backward is not None:
        blocks.append(_backward(report, max_rows=max_rows, words=words))
    if report.timing is not None:
        blocks.append(slowest(report))
    title = cell("execorder: ", code(report.target), f" ({report.mode} trace)")
    return Document(title, tuple(blocks))


def _memory(report: Report) -> Table:
    """What a training step on one device holds."""
    memory = report.memory
    assert memory is not None
    at = memory.peak_at
    where = str(at.phase)
    if at.call is not None and at.call < len(report.modules):
        call = report.modules[at.call]
        where += f", at call #{at.call} {label(call.name)} ({call.type})"
    ran = "meta (no memory used)" if memory.device == "meta" else memory.device
    return memory_table(
        memory, title="Memory of a training step", where=where, measured=f"on {ran}"
    )


SLOWEST = 10  # modules in the timing table


def slowest(report: Report, count: int = SLOWEST) -> Table:
    """The modules that took longest in forward, by self time (their calls summed)."""
    assert report.timing is not None
    totals: dict[str, list[Any]] = {}
    for call, times in zip(report.modules, report.timing.calls, strict=True):
        entry = totals.setdefault(call.name, [call.type, 0, 0.0, 0.0])
        entry[1] += 1
        entry[2] += times.self_us
        # A module called inside itself is counted once in its total.
        if not any(report.modules[a].name == call.name for a in _ancestors(report, call.index)):
            entry[3] += times.total_us
    ranked = sorted(totals.items(), key=lambda item: -item[1][2])[:count]
    forward = report.timing.calls[0].total_us
    rows = tuple(
        Row(
            (
                cell(code(label(name))),
                cell(kind),
                cell(f"{calls:,}"),
                cell(time_text(own)),
                cell(f"{own / forward:.0%}" if forward else "-"),
                cell(time_text(total)),
            )
        )
        for name, (kind, calls, own, total) in ranked
    )
    columns = (
        Column("module", NAME),
        Column("type", FIXED),
        Column("calls", NUMBER),
        Column("self", NUMBER),
        Column("of forward", NUMBER),
        Column("total", NUMBER),
    )
    title = (
        f"Slowest modules, by self time ({report.timing.clock} clock; forward took "
        f"{time_text(forward)})"
    )
    return Table(title, columns, rows)


def _ancestors(report: Report, index: int) -> list[int]:
    found, parent = [], report.modules[index].parent
    while parent is not None:
        found.append(parent)
        parent = report.modules[parent].parent
    return found


def ddp_verdict(report: Report, words: Words = PYTHON) -> Row:
    """Whether DDP (``find_unused_parameters=False``) gets a gradient for every parameter.

    "Fails" too when a parameter's gradient arrives in several backward passes
    (reentrant checkpoints): DDP marks each parameter ready once a step.
    Never "ok" on an assumption: when the status of a trainable parameter
    rests on one (a meta run's routing), a step that routes otherwise can
    leave it without a gradient. Nor when forward returns several outputs and
    some parameters get a gradient only through outputs other than the main
    one: a loss that does not read those leaves them without. When the main
    one reaches them all, "ok" names it, and an output that would not do.
    "Not proven" too when the parameters without a gradient are all read only
    inside custom autograd Functions whose backward no walk sees.
    The parameters DDP ignores (:attr:`Report.ddp_ignored`) count as frozen. A
    recorded step says "fails" too where the DDP that ran it was built for other
    parameters, or left gradients that came late unreduced (:attr:`Report.ddp_unreduced`),
    or had not finished reducing, by its own check (:attr:`Report.ddp_waiting`).
    """
    if report.ddp_built is not None:
        return fact("DDP check", _built_text(report.ddp_built), Severity.ERROR)
    every = "every trainable parameter" + (" DDP waits for" if report.ddp_ignored else "")
    report = report.as_ddp_sees_it()
    late = report.ddp_unreduced
    if late:
        text = (
            f"fails: {plural(len(late), 'trainable parameter')} ({listed(late)}) "
            f"{'gets its' if len(late) == 1 else 'get their'} gradient only after the first "
            "backward through forward's outputs (an autograd.grad before the loss's); DDP "
            "with static_graph=True all-reduces at the end of that one in its first step, so "
            f"{'it is' if len(late) == 1 else 'they are'} never all-reduced and the ranks "
            "drift apart: wrap the model without static_graph=True"
        )
        return fact("DDP check", text, Severity.ERROR)
    if report.ddp_waiting:  # DDP's own check, on the recorded step
        around = ddps_named(report.ddp_waiting)
        lost = [p.name for p in report.no_grad()]
        text = (
            f"fails: the DDP around {around} did not finish reducing the recorded step's "
            "gradients (its own check), so it fails at the next step"
        )
        if lost:
            text += f"; {plural(len(lost), 'trainable parameter')} got none ({listed(lost)})"
        return fact("DDP check", text, Severity.ERROR)
    missing = report.summary.params_no_grad
    resting = len(report.findings(Category.ASSUMPTION))
    if report.no_use_seen and not report.assumed(AssumptionKind.DRAWN):  # else: drawn so
        text = (
            "not proven: no parameter was seen used while forward ran; either forward reads "
            f"none of its {plural(report.summary.params_total, 'parameter')} (then DDP fails), "
            "or it reads copies of them that execorder does not see"
        )
        return fact("DDP check", text, Severity.ERROR)
    unseen = _unseen_missing(report)
    held = [p.name for p in report.held_by_compiled_code() if p.name not in unseen]
    if missing and held and len(unseen) + len(held) == missing:
        text = (
            f"not proven: {plural(len(held), 'trainable parameter')} ({listed(held)}) "
            f"{'is' if len(held) == 1 else 'are'} dead in eager's graph of the compiled code; "
            "the compiled graph holds what it reads as an input, which DDP counts ready (its "
            "gradient zeros), unless the compiler drops a read whose result goes unused"
        )
        if unseen:
            text += (
                f"; {plural(len(unseen), 'other')} may get one from a custom autograd "
                "Function's unseen backward"
            )
        return fact("DDP check", text, Severity.WARNING)
    if missing and len(unseen) == missing:
        functions = listed(_function_names(report))
        text = (
            f"not proven: {plural(missing, 'trainable parameter')} ({listed(unseen)}) "
            f"{'is' if missing == 1 else 'are'} read only inside the forward of custom "
            f"autograd Functions ({functions}) without being passed: each gets a gradient only "
            "if the Function's backward computes one itself (reversible layers do); a real "
            f"backward decides: {words.arg(Arg.BACKWARD)}"
        )
        return fact("DDP check", text, Severity.WARNING)
    if missing:
        certain = missing - len(unseen) - len(held)
        verb = "gets" if certain == 1 else "get"
        text = f"fails: {plural(certain, 'trainable parameter')} {verb} no gradient"
        if unseen:
            text += (
                f" ({plural(len(unseen), 'other')} may, from a custom autograd Function's "
                "unseen backward)"
            )
        if held:
            text += (
                f" ({plural(len(held), 'other')} may be ready for DDP, as inputs of the "
                "compiled code, which ran eagerly to be recorded)"
            )
        if deciding := _chosen_by(report):
            text += f" in this run; which ones, {deciding}"
        return fact("DDP check", text, Severity.ERROR)
    split = list(report.split_gradients)
    if report.split_by_backwards:
        parts = report.split_by_backwards
        text = (
            f"fails: {plural(len(parts), 'trainable parameter')} "
            f"{'gets its' if len(parts) == 1 else 'get their'} gradient from several backward "
            f"calls over one forward ({listed(parts)}); DDP reduces a parameter once a forward "
            "under every setting, static_graph=True too: it raises, or the ranks drift apart: "
            "add the losses and call backward once"
        )
        return fact("DDP check", text, Severity.ERROR)
    if split:
        text = (
            f"fails: {plural(len(split), 'trainable parameter')} "
            f"{'gets its' if len(split) == 1 else 'get their'} gradient in several backward "
            f"passes ({listed(split)}: reentrant checkpoints run their own); DDP raises, or "
            "all-reduces before the last part arrives and ranks drift apart: "
            f"{non_reentrant(report.own_checkpoints)}, or DDP(static_graph=True)"
        )
        return fact("DDP check", text, Severity.ERROR)
    if resting:
        rest = "rests" if resting == 1 else "rest"
        kinds = {a.assumed for a in report.assumptions}
        on = " or ".join(dict.fromkeys(_ON[kind] for kind in _ON if kind in kinds))
        step = (
            "a step that selects otherwise (a router sending no token to an expert)"
            if AssumptionKind.DRAWN not in kinds
            else "a step that draws otherwise (LayerDrop skipping a layer)"
            if not kinds & {AssumptionKind.SELECTION, AssumptionKind.COMPUTED}
            else "a step that draws or selects otherwise"
        )
        text = (
            f"not proven: {plural(resting, 'trainable parameter')} {rest} on {on} (below); "
            f"{step} can leave one without a gradient"
        )
        return fact("DDP check", text, Severity.WARNING)
    reach = report.output_reach
    if reach is not None and reach.misses.get(reach.main):
        elsewhere = reach.only_elsewhere()
        names = list(elsewhere)
        others = [o for o in reach.outputs if any(o in found for found in elsewhere.values())]
        get, them = ("gets", "it") if len(names) == 1 else ("get", "them")
        text = (
            f"not proven: {plural(len(names), 'trainable parameter')} {get} a gradient only "
            f"through {'output' if len(others) == 1 else 'outputs'} {', '.join(others)}, "
            f"not {reach.main} ({listed(names)}); a loss that does not read "
            f"{'it' if len(others) == 1 else 'them'} leaves {them} without one"
        )
        return fact("DDP check", text, Severity.WARNING)
    if reach is not None and reach.misses:
        output, missed = next(iter(reach.misses.items()))
        more = len(reach.misses) - 1
        text = (
            f"ok through output {reach.main}: a loss on {output} alone misses "
            f"{plural(len(missed), 'trainable parameter')} ({listed(missed)})"
            + (
                f", and {plural(more, 'other output')} {'misses' if more == 1 else 'miss'} some"
                if more
                else ""
            )
        )
        return fact("DDP check", text, Severity.OK)
    if reach is not None:
        text = f"ok: {every} gets a gradient, through any one output alone"
        return fact("DDP check", text, Severity.OK)
    return fact("DDP check", f"ok: {every} gets a gradient", Severity.OK)


def _built_text(built: DdpBuilt) -> str:
    """Why a DDP built when other parameters required grad fails the job, or lets it drift."""
    then = f"{plural(built.params, 'parameter')} ({size_text(built.bytes)})"
    now = f"{built.params_now:,} ({size_text(built.bytes_now)})"
    consequences = []
    if built.frozen_since:
        consequences.append(
            "it still waits for those frozen since, and fails at the next step unless "
            "find_unused_parameters=True or static_graph=True"
        )
    if built.trainable_since:
        consequences.append(
            "it never all-reduces those made trainable since, and the ranks' copies drift "
            "apart with no error"
        )
    return (
        f"fails: the DDP that ran was built when {then} required grad, {now} do now: "
        f"{'; '.join(consequences)}; set requires_grad before wrapping the model, or wrap it "
        "again"
    )


def ddp_ignored_fact(report: Report) -> Row:
    """The trainable parameters DDP leaves out, which the DDP check does not count."""
    names = report.ddp_ignored
    text = (
        f"{plural(len(names), 'trainable parameter')} ({listed(names)}): DDP neither numbers "
        "them nor waits for their gradients (the model names them in "
        "_ddp_params_and_buffers_to_ignore, or its DDP was made without them)"
    )
    return fact("DDP ignores", text)


def find_unused_fact(report: Report) -> Row:
    """What ``find_unused_parameters=True`` does to a model whose reentrant checkpoints give some
    parameters their only gradient: DDP's search for unused parameters misses them."""
    hidden = report.as_ddp_sees_it().recompute_only
    get = "gets its" if len(hidden) == 1 else "get their"
    text = (
        f"with find_unused_parameters=True fails: {plural(len(hidden), 'trainable parameter')} "
        f"({listed(hidden)}) {get} "
        "gradient only from reentrant checkpoints' recomputes, which forward's graph does not "
        "hold: DDP takes them for unused, then raises when their gradient arrives; keep "
        f"find_unused_parameters=False, {non_reentrant(report.own_checkpoints)}, or "
        "DDP(static_graph=True)"
    )
    return fact("DDP, find_unused", text, Severity.WARNING)


def never_recomputed_fact(report: Report) -> Row:
    """Why dead parameters read only in reentrant checkpoints that never recompute get none."""
    seen = report.as_ddp_sees_it()
    never, dead = len(seen.never_recomputed), len(seen.dead)
    which = (
        f"{'the' if never == dead else f'{never:,} of the'} {plural(dead, 'dead parameter')}"
        if dead > 1
        else "the dead parameter"
    )
    text = (
        f"{which} {'is' if never == 1 else 'are'} "
        "read only inside reentrant checkpoints none of whose inputs needs grad: torch never "
        "recomputes those blocks in backward, so they get no gradient; use "
        "use_reentrant=False, or make an input of each block need grad (transformers' and "
        "peft's enable_input_require_grads())"
    )
    return fact("never recomputed", text, Severity.WARNING)


def _unseen_missing(report: Report) -> list[str]:
    """Trainable parameters without a gradient that rest on a custom Function's backward."""
    if not report.assumed(AssumptionKind.BACKWARD):
        return []
    return [p.name for p in report.no_grad() if p.rests_on_assumption]


def compiled_fact(report: Report) -> Row:
    """That compiled code ran eagerly for the recording, and what rests on it."""
    held = len(report.held_by_compiled_code())
    text = (
        "ran eagerly to be recorded (torch.compile's own graph is not seen): "
        f"{plural(held, 'parameter')} it reads {'is' if held == 1 else 'are'} dead in "
        "eager's graph, and may be inputs of the compiled one"
    )
    return fact("compiled code", text, Severity.WARNING)


def _function_names(report: Report) -> list[str]:
    return list(
        dict.fromkeys(
            a.op.removesuffix(".backward") for a in report.assumed(AssumptionKind.BACKWARD)
        )
    )


def unseen_backward_fact(report: Report, words: Words = PYTHON) -> Row:
    """Which custom Functions' backward was not seen, and what is taken to get no gradient."""
    names = _function_names(report)
    resting = len(_unseen_missing(report))
    one = len(names) == 1
    text = (
        f"the backward of {listed(names)} runs only in a real backward: "
        f"{plural(resting, 'parameter')} {'its' if one else 'their'} forward read without "
        f"being passed {'is' if resting == 1 else 'are'} taken as getting no gradient from "
        f"{'it' if one else 'them'}; a real backward decides: {words.arg(Arg.BACKWARD)}"
    )
    return fact("unseen backward", text, Severity.WARNING)


def assumption_places(made: Sequence[Assumption]) -> list[str]:
    """Where the assumptions ``made`` were made, each place once: ``op at file.py:line``."""
    return list(dict.fromkeys(f"{a.op} at {a.where}" if a.where else a.op for a in made))


def _made(report: Report, kind: AssumptionKind) -> tuple[int, str]:
    """How many assumptions of ``kind`` the run made, and where (the first two places)."""
    made = report.assumed(kind)
    places = assumption_places(made)
    shown = ", ".join(places[:2]) + (f", +{len(places) - 2} more" if len(places) > 2 else "")
    return sum(a.count for a in made), shown


def _resting(report: Report, kind: AssumptionKind, on: str) -> str:
    """``; N parameters rest on {on}`` where only ``kind`` was assumed (else the count is
    of every kind's, said by the DDP check)."""
    if {a.assumed for a in report.assumptions} != {kind}:
        return ""
    resting = report.summary.params_on_assumption
    return f"; {plural(resting, 'parameter')} {'rests' if resting == 1 else 'rest'} on {on}"


def assumptions_fact(report: Report) -> Row:
    """What a meta run assumed, in one line: how many selections, where, and what rests on them."""
    count, shown = _made(report, AssumptionKind.SELECTION)
    rest = "rests" if report.summary.params_on_assumption == 1 else "rest"
    keep = "keeps" if count == 1 else "keep"
    text = (
        f"{plural(count, 'selection')} {keep} every element ({shown}); "
        f"{plural(report.summary.params_on_assumption, 'parameter')} {rest} on this"
    )
    return fact("assumed on meta", text, Severity.WARNING)


_ON = {
    AssumptionKind.SELECTION: "an assumption",
    AssumptionKind.DRAWN: "a random draw",
    AssumptionKind.COMPUTED: "a choice made from this run's values",
    AssumptionKind.BACKWARD: "an assumption",
    AssumptionKind.COMPILED: "an assumption",
}
"""What parameters rest on, by the kind of assumption (in the DDP check)."""


def _chosen_by(report: Report) -> str:
    """What decides which parameters a run leaves without a gradient, if not the model."""
    drawn, computed = report.assumed(AssumptionKind.DRAWN), report.assumed(AssumptionKind.COMPUTED)
    if drawn and computed:
        return "a random draw and this run's values decide (below)"
    if computed:
        return "this run's values decide (a router's choice, below)"
    return "a random draw decides (below)" if drawn else ""


def computed_fact(report: Report) -> Row:
    """The choices a real run made from values computed from parameters, and what rests on
    them."""
    count, shown = _made(report, AssumptionKind.COMPUTED)
    text = (
        f"{plural(count, 'choice')} made from values computed from parameters ({shown}): "
        "another batch, or the weights a step later, may choose otherwise"
    )
    text += _resting(report, AssumptionKind.COMPUTED, "them")
    return fact("chosen by values", text, Severity.WARNING)


def drawn_fact(report: Report) -> Row:
    """The choices forward made from values it drew at random, where, and what rests on them."""
    count, shown = _made(report, AssumptionKind.DRAWN)
    drawn = report.assumed(AssumptionKind.DRAWN)
    seeded = report.seed is not None and not all(a.own_generator for a in drawn)
    text = f"{plural(count, 'choice')} made from {shown}: this run is one draw"
    text += f" of seed {report.seed}" if seeded else ""
    if any(a.own_generator for a in drawn):
        text += " and" if seeded else ""
        text += " of the model's own generator, which the seed does not set"
    text += _resting(report, AssumptionKind.DRAWN, "it")
    return fact("random choices", text, Severity.WARNING)


def _summary(report: Report, words: Words = PYTHON) -> Table:
    s = report.summary
    rows = [fact("target", cell(code(report.target))), fact("mode", str(report.mode))]
    if report.concrete_args:
        rows.append(fact("concrete args", args_text(report.concrete_args)))
    if report.defaults:
        rows.append(fact("defaults used", args_text(report.defaults)))
    if report.inputs:
        rows.append(fact("inputs", ", ".join(f"{k}={v}" for k, v in report.inputs.items())))
    for source, names in made_inputs(report.inputs_made).items():
        rows.append(fact("inputs made", f"{', '.join(names)}: {MADE[source]}"))
    if report.seed is not None:
        rows.append(fact("seed", str(report.seed)))
    rows.append(fact("module calls", f"{s.calls:,} ({plural(s.modules, 'distinct module')})"))
    frozen = f" ({s.params_frozen:,} frozen)" if s.params_frozen else ""
    rows.append(fact("parameters used", f"{s.params_used:,} of {s.params_total:,}{frozen}"))
    unused = f"{s.params_unused:,} ({plural(s.numel_unused, 'element')}, {s.unused_fraction:.1%})"
    rows.append(fact("unused", unused, warn_if(s.params_unused)))
    rows.append(fact("dead (used, no gradient)", f"{s.params_dead:,}", warn_if(s.params_dead)))
    if s.params_assumed:  # FX cannot see into a leaf; eager saw a gradient reach, no read
        label = "assumed used (opaque leaves)" if report.mode is Mode.FX else "used, read unseen"
        rows.append(fact(label, f"{s.params_assumed:,}"))
    if s.external_uses:
        rows.append(fact("external uses", f"{s.external_uses:,}", Severity.WARNING))
    if report.assumed(AssumptionKind.SELECTION):
        rows.append(assumptions_fact(report))
    if report.assumed(AssumptionKind.BACKWARD):
        rows.append(unseen_backward_fact(report, words))
    if report.assumed(AssumptionKind.COMPILED):
        rows.append(compiled_fact(report))
    if report.assumed(AssumptionKind.DRAWN):
        rows.append(drawn_fact(report))
    if report.assumed(AssumptionKind.COMPUTED):
        rows.append(computed_fact(report))
    if report.ddp_ignored:
        rows.append(ddp_ignored_fact(report))
    rows.append(ddp_verdict(report, words))
    if report.as_ddp_sees_it().recompute_only:
        rows.append(find_unused_fact(report))
    if report.as_ddp_sees_it().never_recomputed:
        rows.append(never_recomputed_fact(report))
    return Table("Summary", (Column(""), Column("", NAME)), tuple(rows), header=False)


def _own_params(call: ModuleCall) -> str:
    """Local names of the parameters a call used itself (not through a child)."""
    prefix = f"{call.name}." if call.name else ""
    names = list(
        dict.fromkeys(
            p.removeprefix(prefix) for g in call.uses if g.module == call.name for p in g.params
        )
    )
    if len(names) > OWN_PARAMS_SHOWN:
        more = len(names) - OWN_PARAMS_SHOWN + 1
        names = [*names[: OWN_PARAMS_SHOWN - 1], f"+{more} more"]
    return ", ".join(names)


def module_cell(call: ModuleCall) -> Cell:
    """A module call: its name, its other names, and which call of it this is."""
    parts: list[str | Span] = [code(label(call.name))]
    if call.aliases:
        parts.append(Span(" = " + ", ".join(call.aliases), Tone.MUTED))
    if call.repeat:
        parts.append(Span(f"  (call {call.repeat + 1})", Tone.ACCENT))
    return cell(*parts, indent=call.depth)


def _modules(
    calls: Sequence[ModuleCall], *, depth: int | None, max_rows: int | None, words: Words
) -> Table:
    shown = [c for c in calls if depth is None or c.depth <= depth]
    rows = [
        Row((cell(str(c.index)), module_cell(c), cell(c.type), cell(_own_params(c)))) for c in shown
    ]
    kept, left_out = cut_rows(rows, max_rows, "call", words)
    if len(shown) < len(calls):
        deeper = plural(len(calls) - len(shown), "call")
        left_out = (f"{deeper} nested deeper than {depth} hidden", *left_out)
    columns = (
        Column("#", NUMBER),
        Column("module", NAME),
        Column("type", NAME),
        Column("own parameters used", TEXT),
    )
    title = f"Module forward order ({plural(len(calls), 'call')})"
    return Table(title, columns, kept, left_out, fold=Fold.ALWAYS)


def _param_table(
    title: str,
    params: Sequence[ParamInfo],
    last: tuple[str, Callable[[ParamInfo], str]],
    *,
    what: str = "parameter",
    numbered: bool = False,
    status: bool = True,
    max_rows: int | None,
    words: Words,
    fold: Fold = Fold.LONG,
) -> Table:
    heading, value = last
    status = status and any(status_cell(p).spans for p in params)
    columns = [Column("parameter", NAME), Column("shape", FIXED), Column("numel", NUMBER)]
    columns.append(Column(heading, TEXT))
    if numbered:
        columns.insert(0, Column("#", NUMBER))
    if status:
        columns.append(Column("status", FIXED))
    rows = []
    for i, param in enumerate(params):
        cells = [param_cell(param), cell(shape_text(param.shape)), cell(f"{param.numel:,}")]
        cells.append(cell(value(param)))
        if numbered:
            cells.insert(0, cell(str(i)))
        if status:
            cells.append(status_cell(param))
        rows.append(Row(tuple(cells)))
    kept, left_out = cut_rows(rows, max_rows, what, words)
    return Table(title, tuple(columns), kept, left_out, fold=fold)


def _param_order(params: Sequence[ParamInfo], *, max_rows: int | None, words: Words) -> Table:
    return _param_table(
        f"Parameter forward order, by first use ({plural(len(params), 'parameter')})",
        params,
        ("first use", first_use),
        numbered=True,
        max_rows=max_rows,
        words=words,
        fold=Fold.ALWAYS,
    )


def _unused(unused: Sequence[ParamInfo], *, max_rows: int | None, words: Words) -> Block:
    if not unused:
        return Message(cell("No unused parameters."), Severity.OK)
    owner = ("owner", lambda p: label(p.owner))
    return _param_table(
        f"Unused parameters ({len(unused):,})", unused, owner, max_rows=max_rows, words=words
    )


def _dead(dead: Sequence[ParamInfo], *, max_rows: int | None, words: Words) -> Block:
    if not dead:
        return Message(cell("No dead parameters: every use reaches an output."), Severity.OK)
    return _param_table(
        f"Dead parameters, with no gradient ({len(dead):,})",
        dead,
        ("first use", first_use),
        status=False,
        max_rows=max_rows,
        words=words,
    )


_WHY_ASSUMED: dict[AssumptionKind, Callable[[Words], str]] = {
    AssumptionKind.SELECTION: lambda _: (
        "On meta, a selection made from values computed from parameters (a router's "
        "choice) cannot be known: each was assumed to keep every element."
    ),
    AssumptionKind.BACKWARD: lambda words: (
        "A custom autograd Function's backward runs only in a real backward: each was "
        "assumed to give no gradient to the parameters its forward read without being "
        f"passed them ({words.arg(Arg.BACKWARD)} runs one)."
    ),
    AssumptionKind.COMPILED: lambda _: (
        "Compiled code ran eagerly to be recorded: a parameter it reads that is dead in "
        "eager's graph is an input of the compiled graph, which DDP counts ready, unless "
        "the compiler drops the read."
    ),
    AssumptionKind.COMPUTED: lambda _: (
        "A real run chose from values computed from parameters (a router's choice of "
        "experts): another batch, or the weights a step later, may choose otherwise."
    ),
    AssumptionKind.DRAWN: lambda _: (
        "Forward chose from values it drew at random (LayerDrop runs a layer only if "
        "torch.rand([]) >= p): the run is one draw, and another draw chooses otherwise."
    ),
}
"""Why each kind of assumption may not hold, in the order the note gives them."""


def _assumptions(report: Report, *, max_rows: int | None, words: Words) -> tuple[Table, Message]:
    rows = [
        Row(
            (
                cell(f"#{a.call} ", code(label(a.module))),
                cell(a.op),
                cell(a.where),
                cell(f"{a.count:,}"),
            )
        )
        for a in report.assumptions
    ]
    kept, left_out = cut_rows(rows, max_rows, "assumption", words)
    said = [why(words) for kind, why in _WHY_ASSUMED.items() if report.assumed(kind)]
    # Every draw but torch's (a tensor, followed) is a number: Python's, NumPy's, the model's own.
    drawn = report.assumed(AssumptionKind.DRAWN)
    if any(not a.op.startswith(("torch.", "Tensor.")) for a in drawn):
        said.append(
            "A draw from Python's or NumPy's generator is a number that cannot be followed: "
            "each counts as a choice, though it may decide values alone (wav2vec2's "
            "SpecAugment masks)."
        )
    note = cell(
        " ".join(said) + " The parameters marked 'on assumption' may fare otherwise in a real step."
    )
    columns = (
        Column("call", NAME),
        Column("op", FIXED),
        Column("where", FIXED),
        Column("times", NUMBER),
    )
    kinds = {a.assumed for a in report.assumptions}
    title = (
        f"Assumed on meta: every element kept ({len(rows):,})"
        if kinds == {AssumptionKind.SELECTION}
        else f"Random choices ({len(rows):,})"
        if kinds == {AssumptionKind.DRAWN}
        else f"Choices made from values ({len(rows):,})"
        if kinds == {AssumptionKind.COMPUTED}
        else f"Assumed ({len(rows):,})"
    )
    return Table(title, columns, kept, left_out), Message(note, Severity.WARNING)


def _external(report: Report) -> Table:
    rows = tuple(
        Row((cell(code(u.param)), cell(label(u.owner)), cell(f"#{u.call} {label(u.used_by)}")))
        for u in report.external
    )
    columns = (Column("parameter", NAME), Column("owner", NAME), Column("used by", NAME))
    title = f"External uses, owner not running ({len(rows):,})"
    return Table(title, columns, rows)


def _backward(report: Report, *, max_rows: int | None, words: Words) -> Table:
    order = report.backward or ()
    forward = {p.name: i for i, p in enumerate(report.params)}
    rows = [
        Row((cell(str(i)), cell(code(name)), cell(str(forward.get(name, "")))))
        for i, name in enumerate(order)
    ]
    kept, left_out = cut_rows(rows, max_rows, "parameter", words)
    columns = (Column("#", NUMBER), Column("parameter", NAME), Column("forward #", NUMBER))
    title = f"Backward order, by gradient accumulation ({plural(len(order), 'parameter')})"
    return Table(title, columns, kept, left_out, fold=Fold.ALWAYS)
