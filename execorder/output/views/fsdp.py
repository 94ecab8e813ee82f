"""The view of an FSDP2 plan: the units with their prefetch lists, then the checks.

Each check's sentence and the unit rule are written here, once: the table
shows them, and the JSON's ``message`` and ``unit_rule`` are them, composed
when written (``Check.describe`` and ``FsdpPlan.to_dict`` ask this module).
``words`` names the caller's arguments: Python's keywords by default, the
command line's flags from ``execorder.cli``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from execorder.analysis.sharding import BackwardSource, FsdpPlan
from execorder.analysis.sharding.kinds import CheckKind, Direction, Mistarget, UnitChoice
from execorder.analysis.sharding.records import Check, UnitRule
from execorder.errors import PYTHON, Arg, Words
from execorder.output.document import (
    Block,
    Cell,
    Column,
    Document,
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
    TEXT,
    fact,
    made_inputs,
    memory_table,
)
from execorder.report import size_text
from execorder.spelling import args_text, listed, non_reentrant


def _names(names: Sequence[str]) -> Cell:
    if not names:
        return cell(Span("(none)", Tone.MUTED))
    parts: list[str | Span] = []
    for i, name in enumerate(names):
        parts.extend((", " if i else "", code(label(name))))
    return cell(*parts)


def fsdp_view(plan: FsdpPlan, *, words: Words = PYTHON) -> Document:
    """An FSDP2 plan: what was traced, the units with their prefetch lists, then the checks."""
    errors, warnings = plan.count(Severity.ERROR), plan.count(Severity.WARNING)
    facts = [fact("target", cell(code(plan.target))), fact("mode", plan.mode)]
    if plan.concrete_args:
        facts.append(fact("concrete args", args_text(plan.concrete_args)))
    if plan.combinations:
        facts.append(fact("checked with", "; ".join(args_text(c) for c in plan.combinations)))
    for source, names in made_inputs(plan.inputs_made).items():
        facts.append(fact("inputs made", f"{', '.join(names)}: {MADE[source]}"))
    if plan.seed is not None:
        facts.append(fact("seed", str(plan.seed)))
    largest = max(plan.units, key=lambda u: u.bytes)
    dtypes = ", ".join(dict.fromkeys(d for u in plan.units for d in u.bytes_by_dtype))
    facts += [
        fact("units", f"{len(plan.units):,}, chosen by {rule_text(plan.unit_rule, words)}"),
        fact(
            "parameters",
            f"{size_text(sum(u.bytes for u in plan.units))} ({dtypes or 'none'}), all-gathered "
            "unit by unit; the "
            f"largest unit, {label(largest.name)}, {size_text(largest.bytes)}",
        ),
        fact("sharding", _sharding(plan)),
        fact(
            "prefetch",
            f"{plural(plan.prefetch, 'unit')} ahead; "
            + (
                "backward order from a real backward"
                if plan.backward_from is BackwardSource.RECORDED
                else "backward order taken as reverse post-forward "
                f"({words.arg(Arg.BACKWARD)} records it)"
            ),
        ),
    ]
    if errors:
        verdict = f"fails: {plural(errors, 'error')}, {plural(warnings, 'warning')} (below)"
        facts.append(fact("FSDP2 check", verdict, Severity.ERROR))
    elif warnings:
        facts.append(
            fact(
                "FSDP2 check", f"runs, with {plural(warnings, 'warning')} (below)", Severity.WARNING
            )
        )
    else:
        facts.append(fact("FSDP2 check", "ok: nothing breaks sharding or prefetching", Severity.OK))
    blocks: list[Block] = [
        Table("Summary", (Column(""), Column("", NAME)), tuple(facts), header=False)
    ]
    if plan.memory is not None:
        blocks.append(_memory(plan))

    rows = []
    sharded, cast = plan.world_size > 1, plan.param_dtype is not None
    for index, unit in enumerate(plan.units):
        ran = unit.first_call is not None
        first = cell(
            f"{unit.first_call:,}" if ran else Span("never", Tone.WARN),
            Span(f" (x{unit.calls})", Tone.ACCENT) if unit.calls > 1 else "",
        )
        mixed = ", ".join(plan_dtypes(unit.bytes_by_dtype))
        sizes = (cell(size_text(unit.shard_bytes)),) if sharded else ()
        rows.append(
            Row(
                (
                    cell(str(index)),
                    cell(code(label(unit.name)), Span(f" {unit.type}", Tone.MUTED)),
                    cell(f"{unit.params:,}"),
                    cell(
                        size_text(unit.gather_bytes),
                        Span(f" ({mixed})", Tone.MUTED) if mixed and not cast else "",
                    ),
                    *sizes,
                    first,
                    _names(plan.forward_prefetch.get(unit.name, ())) if ran else cell(""),
                    _names(plan.backward_prefetch.get(unit.name, ())) if ran else cell(""),
                )
            )
        )
    columns = (
        Column("#", NUMBER),
        Column("unit", NAME),
        Column("params", NUMBER),
        Column("gathers", FIXED),
        *((Column("per rank", FIXED),) if sharded else ()),
        Column("first call", FIXED),
        Column("forward prefetch", TEXT),
        Column("backward prefetch", TEXT),
    )
    blocks.append(Table("Units, in forward order", columns, tuple(rows)))

    if plan.checks:
        rows = [
            Row(
                (cell(str(c.severity)), cell(str(c.kind)), cell(check_message(c, words))),
                c.severity,
            )
            for c in plan.checks
        ]
        found = (Column("severity", FIXED), Column("check", FIXED), Column("finding", TEXT))
        blocks.append(Table(f"Checks ({len(rows):,})", found, tuple(rows)))
    else:
        line = cell(
            "No problems found: every unit runs, reads only its own parameters, and "
            "registration order is execution order."
        )
        blocks.append(Message(line, Severity.OK))
    return Document(cell("execorder fsdp: ", code(plan.target)), tuple(blocks))


def _memory(plan: FsdpPlan) -> Table:
    """What one rank holds in a training step under the plan."""
    memory = plan.memory
    assert memory is not None
    at = memory.peak_at
    where = str(at.phase)
    if memory.peak_unit is not None:
        where += f", in unit {label(memory.peak_unit)}"
    if at.call is not None:
        where += f" (call #{at.call})"
    measured = (
        f"FSDP2 itself sharding the plan over {memory.world_size:,} ranks, on meta (no memory used)"
    )
    return memory_table(
        memory, title="Memory of one rank's training step", where=where, measured=measured
    )


def _sharding(plan: FsdpPlan) -> str:
    """How the units are sharded: ranks, dtypes, the reshard policy."""
    on_1 = plural(len(plan.shard_dims), "parameter")
    padded = f"dim 0, {on_1} on dim 1" if plan.shard_dims else "dim 0"
    ranks = (
        f"over {plan.world_size:,} ranks (gathers padded as FSDP2 pads {padded})"
        if plan.world_size > 1
        else "1 rank, unsharded sizes"
    )
    dtypes = ""
    if plan.param_dtype or plan.reduce_dtype:
        parts = [f"gathered in {plan.param_dtype}" if plan.param_dtype else ""]
        parts.append(f"reduced in {plan.reduce_dtype}" if plan.reduce_dtype else "")
        dtypes = "; " + ", ".join(p for p in parts if p)
    kept = [label(u.name) for u in plan.units if not u.reshard_after_forward and u.name]
    policy = f"; reshard after forward: {plan.reshard_after_forward}"
    if kept:
        policy += f" (kept gathered: {', '.join(kept)}, and the root)"
    return ranks + dtypes + policy


def plan_dtypes(by_dtype: Mapping[str, int]) -> list[str]:
    """A unit's bytes by dtype, when it has several (one dtype is in the summary)."""
    if len(by_dtype) <= 1:
        return []
    return [f"{dtype} {size_text(size)}" for dtype, size in by_dtype.items()]


NONE = "no arguments"  # a run with no concrete arguments, in a check's sentence


def rule_text(rule: UnitRule, words: Words = PYTHON) -> str:
    """How the units were chosen, for a person."""
    if rule.choice is None:
        return rule.written
    if rule.left_out:
        first = rule_text(
            dataclasses.replace(rule, left_out=(), read_outside=(), writes_inputs=()), words
        )
        apart = {*rule.read_outside, *rule.writes_inputs}
        tied = [name for name in rule.left_out if name not in apart]
        parts = []
        if tied:
            why = (
                "it shares a parameter with another unit, so the unit around it holds it"
                if len(tied) == 1
                else "they share parameters with other units, so the units around them hold them"
            )
            left = ", ".join(label(name) for name in tied)
            parts.append(f"{left}: {why} (FSDP2 refuses a parameter in two units)")
        if rule.read_outside:
            why = (
                "a call outside it reads its parameters, so the unit around it holds it"
                if len(rule.read_outside) == 1
                else "calls outside them read their parameters, so the units around them hold them"
            )
            left = ", ".join(label(name) for name in rule.read_outside)
            parts.append(
                f"{left}: {why} (FSDP2 gathers a unit's parameters for its own forward only)"
            )
        if rule.writes_inputs:
            one = len(rule.writes_inputs) == 1
            left = listed([label(name) for name in rule.writes_inputs])
            parts.append(
                f"{left}: {'it writes' if one else 'they write'} into a list, dict or dataclass "
                f"{'it is' if one else 'they are'} passed that holds a tensor needing grad, so "
                f"{'the unit around it holds it' if one else 'the units around them hold them'} "
                "(FSDP2 passes "
                "a unit a copy of such an argument)"
            )
        return f"{first}, but not " + ", nor ".join(parts)
    names = ", ".join(rule.names)
    if rule.choice is UnitChoice.GIVEN:
        return words.arg(Arg.UNIT, *rule.names)
    if rule.choice is UnitChoice.NO_SPLIT:
        whose = f"{rule.source}'" if rule.source else "the model's"
        return f"{whose} _no_split_modules ({names})"
    if rule.choice is UnitChoice.REPEATED:
        return f"the repeated block class ({names})"
    if rule.choice is UnitChoice.TORCHTITAN:
        blocks = f"each block ({names})" if names else "each block"
        vision = f", the vision encoder ({rule.vision}) as one unit" if rule.vision else ""
        return (
            f"torchtitan's decoder layout: the input embedding, {blocks}, the final norm "
            f"with the output head as one group (all three when tied){vision}, the root"
        )
    if rule.choice is UnitChoice.ACCELERATE:
        blocks = f"each _no_split_modules block ({names})" if names else "no block (none named)"
        return (
            f"accelerate's FSDP2 preparation: {blocks}, the input embedding and the final norm "
            "with the output head as one group (the embedding too when tied) where found, "
            "the root"
        )
    return f"the root alone: no repeated block found (choose units with {words.arg(Arg.UNIT)})"


_MISTARGET = {
    Mistarget.NEVER_RUNS: "never runs in forward: gathered for nothing and held",
    Mistarget.RAN_BACKWARD: "already ran its backward: gathered again for nothing",
    Mistarget.NOT_NEXT_BACKWARD: "does not run next in backward: gathered early and held",
    Mistarget.RAN: "already ran: gathered again and held until backward",
    Mistarget.NOT_NEXT: "does not run next: gathered early and held",
}


_RESTS_ON = {
    CheckKind.RANDOM_CHOICE: (
        "which units run rests on values forward drew at random ({where}; LayerDrop skips "
        "layers so): ranks that draw otherwise run other units, and hang in an all-gather "
        "the others never make; draw alike on every rank, or turn it off"
    ),
    CheckKind.VALUES_CHOICE: (
        "which units run may rest on values computed from parameters ({where}; a router's "
        "choice of experts): a rank whose batch chooses otherwise runs other units, and "
        "the ranks hang in an all-gather the others never make; run every unit on every "
        "rank each step (an expert on an empty batch too)"
    ),
    CheckKind.ASSUMPTION: (
        "the order rests on what the meta run assumed ({where}): a real run may route "
        "elsewhere and run units in another order, or a rank skip a unit and the others "
        "hang in its all-gather"
    ),
}
"""What a check of a plan resting on a choice says, where it was made: ``{where}``."""


def check_message(check: Check, words: Words = PYTHON) -> str:
    """One or two sentences for a person: what the check found, why it matters, what to do."""
    if check.written:
        return check.written
    kind, units = check.kind, check.units
    if kind is CheckKind.EXTERNAL_USE:
        return (
            f"{label(check.user)} uses {listed(check.params)} of unit {label(units[0])} while "
            "that unit is not running: FSDP2 gathers a unit's parameters only for its own "
            "forward, so this reads a shard (it fails, or computes on the wrong values); call "
            "the module instead, or make both one unit"
        )
    if kind is CheckKind.INPUT_WRITE:
        times = "once" if check.calls == 1 else f"in {check.calls} calls"
        return (
            f"unit {label(units[0])} writes into a list, dict or dataclass it is passed that "
            f"holds a tensor needing grad ({times}): FSDP2 passes a unit a copy of such an "
            "argument (to hook its backward), so the write is lost to the caller and the job "
            "computes something else, with no error; keep such state on a module, or leave "
            "the module that writes it inside a larger unit"
        )
    if kind is CheckKind.SHARED:
        return (
            f"{' and '.join(check.params)} are one parameter in units "
            f"{' and '.join(label(u) for u in units)}: FSDP2 refuses a parameter "
            "shared by two of its groups (at the first forward); put the modules "
            "sharing it in one unit (fully_shard([a, b]), their common parent, or "
            "the root)"
        )
    if kind is CheckKind.VARIES:
        without = listed([args_text(a, none=NONE) for a in check.combinations], 2)
        return (
            f"unit {label(units[0])} runs for some values only (not with {without}): ranks "
            "that disagree wait in its all-gather forever (a hang)"
        )
    if kind is CheckKind.NOT_RUN:
        return (
            f"unit {label(units[0])} never runs in forward: its {len(check.params)} "
            "parameters get no gradient, and a prefetch naming it gathers them for nothing"
        )
    if kind is CheckKind.REPEATED:
        if not check.reshards:
            return (
                f"unit {label(units[0])} runs {check.calls} times in forward: it stays "
                "gathered (no reshard_after_forward), and FSDP2 prefetches its list on every "
                "call, so its list keeps only units that run next after each of them"
            )
        return (
            f"unit {label(units[0])} runs {check.calls} times in forward: with "
            f"reshard_after_forward it is gathered {check.calls} times "
            f"({size_text(check.bytes)} each), and FSDP2 prefetches its list on every call, "
            "so its list keeps only units that run next after each of them"
        )
    if kind is CheckKind.REGISTRATION_ORDER:
        step = "i+1" if check.direction is Direction.FORWARD else "i-1"
        if check.mistarget is Mistarget.REPEATS:
            when = (
                f"does not run next after each of its {check.calls} calls (FSDP2 "
                "prefetches on every call): gathered early and held"
            )
        else:
            when = _MISTARGET[Mistarget(check.mistarget)]
        return (
            f"{check.direction}: registration order (block i prefetches block {step}) "
            f"has {label(units[0])} prefetch {label(units[1])}, which {when}; the "
            f"plan's list: {', '.join(map(label, check.listed)) or 'none'}"
        )
    if kind in _RESTS_ON:
        where = listed([f"{op} in {label(module)}" for op, module in check.assumed])
        return _RESTS_ON[kind].format(where=where)
    if kind is CheckKind.MEMORY:
        largest = ", ".join(f"{what} {size_text(size)}" for what, size in check.largest)
        where = f" (in unit {label(units[0])})" if units else ""
        return (
            f"one rank's training step peaks at {size_text(check.bytes)}{where}, over the "
            f"budget of {size_text(check.budget)}; largest: {largest}"
        )
    if kind is CheckKind.SPLIT_GRADIENT:
        return (
            f"unit {label(units[0])} gets its gradient in several backward passes "
            f"({listed(check.params)}: reentrant checkpoints run their own), the last a "
            "recompute's (its first call is checkpointed): FSDP2 leaves that gradient "
            "unsharded and unreduced, and the optimizer steps on it; "
            f"{non_reentrant(check.checkpoints)}, or make the module that runs the checkpoints "
            "the unit"
        )
    if kind is CheckKind.ORDER_VARIES:
        args = args_text(check.combinations[0], none=NONE)
        return (
            f"with {args} the units run in another order: explicit "
            "prefetch lists, being fixed, mistarget for some values"
        )
    return (
        "only the root is a unit: FSDP2 gathers the whole model at once, which saves no "
        f"memory in forward; choose units with {words.arg(Arg.UNIT, value='CLASS')}"
    )
