"""A plan's facts in words: each check's sentence and the unit rule, written once.

The views show them and the JSON's ``message`` and ``unit_rule`` fields are
them, composed when written; ``words`` names the caller's arguments (Python's
keywords by default, the command line's flags from ``execorder.cli``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from execorder.analysis.sharding.kinds import CheckKind, Direction, Mistarget, UnitChoice
from execorder.errors import PYTHON, Arg, Words
from execorder.spelling import args_text, label, listed, non_reentrant, size_text

NONE = "no arguments"  # a run with no concrete arguments, in a check's sentence

if TYPE_CHECKING:
    from execorder.analysis.sharding.records import Check, UnitRule


def rule_text(rule: UnitRule, words: Words = PYTHON) -> str:
    """How the units were chosen, for a person."""
    if rule.choice is None:
        return rule.written
    names = ", ".join(rule.names)
    if rule.choice is UnitChoice.GIVEN:
        return words.arg(Arg.UNIT, *rule.names)
    if rule.choice is UnitChoice.NO_SPLIT:
        return f"transformers' _no_split_modules ({names})"
    if rule.choice is UnitChoice.REPEATED:
        return f"the repeated block class ({names})"
    if rule.choice is UnitChoice.TORCHTITAN:
        blocks = f"each block ({names})" if names else "each block"
        vision = f", the vision encoder ({rule.vision}) as one unit" if rule.vision else ""
        return (
            f"torchtitan's decoder layout: the input embedding, {blocks}, the final norm "
            f"with the output head as one group (all three when tied){vision}, the root"
        )
    return f"the root alone: no repeated block found (choose units with {words.arg(Arg.UNIT)})"


_MISTARGET = {
    Mistarget.NEVER_RUNS: "never runs in forward: gathered for nothing and held",
    Mistarget.RAN_BACKWARD: "already ran its backward: gathered again for nothing",
    Mistarget.NOT_NEXT_BACKWARD: "does not run next in backward: gathered early and held",
    Mistarget.RAN: "already ran: gathered again and held until backward",
    Mistarget.NOT_NEXT: "does not run next: gathered early and held",
}


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
    if kind is CheckKind.ASSUMPTION:
        where = listed([f"{op} in {label(module)}" for op, module in check.assumed])
        return (
            f"the order rests on what the meta run assumed ({where}): a real run "
            "may route elsewhere and run units in another order"
        )
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
