"""The words of a sharding plan's facts, as enums: what a check found, why, and how bad."""

from __future__ import annotations

from execorder.report import Severity, Word

SEVERITY_RANK = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}
"""The severities a check has, the worst first: a gate on one gates on it and worse."""


class CheckKind(Word):
    """What a plan's check found."""

    EXTERNAL_USE = "external-use"  # a unit's parameters read outside that unit's forward
    SHARED = "shared-params"  # one parameter in two units
    VARIES = "varies"  # a unit runs for some concrete values only (a sweep's)
    NOT_RUN = "not-run"  # a unit never runs in forward
    REGISTRATION_ORDER = "registration-order"  # a registration-order prefetch mistargets
    ORDER_VARIES = "order-varies"  # units run in another order for some values (a sweep's)
    ASSUMPTION = "assumption"  # the order rests on what a meta run assumed
    REPEATED = "repeated"  # a unit runs more than once: re-gathered each time
    ROOT_ONLY = "root-only"  # no unit but the root: the whole model is gathered at once
    MEMORY = "memory"  # one rank's training step exceeds its memory budget
    SPLIT_GRADIENT = "split-gradient"  # a repeated unit's gradient comes in several passes
    INPUT_WRITE = "input-write"  # a unit writes into an argument FSDP2 passes it a copy of
    RANDOM_CHOICE = "random-choice"  # which units run rests on a random draw (LayerDrop)
    VALUES_CHOICE = "values-choice"  # ... or on values computed from parameters (a router)


SEVERITY = {
    CheckKind.EXTERNAL_USE: Severity.ERROR,
    CheckKind.SHARED: Severity.ERROR,
    CheckKind.VARIES: Severity.ERROR,
    CheckKind.NOT_RUN: Severity.WARNING,
    CheckKind.REGISTRATION_ORDER: Severity.WARNING,
    CheckKind.ORDER_VARIES: Severity.WARNING,
    CheckKind.ASSUMPTION: Severity.WARNING,
    CheckKind.REPEATED: Severity.INFO,
    CheckKind.ROOT_ONLY: Severity.INFO,
    CheckKind.MEMORY: Severity.ERROR,
    CheckKind.SPLIT_GRADIENT: Severity.ERROR,
    CheckKind.INPUT_WRITE: Severity.ERROR,
    CheckKind.RANDOM_CHOICE: Severity.WARNING,
    CheckKind.VALUES_CHOICE: Severity.WARNING,
}


class Direction(Word):
    """Which pass a prefetch list serves."""

    FORWARD = "forward"
    BACKWARD = "backward"


class Mistarget(Word):
    """Why a prefetch built from registration order (block i prefetches block i+1) is wrong."""

    NEVER_RUNS = "never-runs"  # the target never runs in forward
    REPEATS = "repeats"  # the prefetching unit runs more than once
    RAN_BACKWARD = "ran-backward"  # the target's backward already ran
    NOT_NEXT_BACKWARD = "not-next-backward"  # the target's backward is not next
    RAN = "ran"  # the target already ran in forward
    NOT_NEXT = "not-next"  # the target does not run next in forward


class UnitChoice(Word):
    """How a plan's units were chosen."""

    GIVEN = "given"  # by the caller, by class or qualified name
    NO_SPLIT = "no-split"  # transformers' _no_split_modules of the model
    REPEATED = "repeated"  # the outermost repeated block class
    ROOT_ALONE = "root-alone"  # nothing to choose: the root alone
    TORCHTITAN = "torchtitan"  # torchtitan's decoder layout
    ACCELERATE = "accelerate"  # accelerate's FSDP2 preparation of a transformers model


class LayoutChoice(Word):
    """Which layout of units a plan follows."""

    BLOCKS = "blocks"  # each block a unit, then the root (execorder's own rule)
    TORCHTITAN = "torchtitan"  # apply_fsdp_to_decoder: embedding, blocks, [norm, head], root
    ACCELERATE = "accelerate"  # fsdp2_prepare_model: _no_split_modules, embedding, [norm, head]


class ReshardPolicy(Word):
    """Which units free their parameters after forward (FSDP2's ``reshard_after_forward``)."""

    DEFAULT = "default"  # torchtitan's: every unit but the root and the one forward ends in
    ALWAYS = "always"  # every unit but the root
    NEVER = "never"  # none: each stays gathered from its forward to its backward


class BackwardSource(Word):
    """Where a plan's backward order comes from (the JSON's ``backward_from``)."""

    RECORDED = "recorded backward"  # a real backward ran while recording
    REVERSE = "reverse post-forward order"  # taken as the reverse of forward
