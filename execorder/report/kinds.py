"""The words a report uses, as enums: each means one thing, spelled in one place.

They are ``str`` enums: a member equals its JSON spelling (``Mode.FX ==
"fx"``), so reports written before them read the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from enum import Enum
from types import MappingProxyType


class Word(str, Enum):
    """A ``str`` enum that prints as its value (``f"{Mode.FX}"`` is ``"fx"``)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class Mode(Word):
    """How forward was recorded: traced by torch.fx, or run for real (eager).

    ``AUTO`` is a choice, never a report's mode: FX, falling back to eager.
    """

    AUTO = "auto"
    FX = "fx"
    EAGER = "eager"


class InputSource(Word):
    """Where inputs execorder made itself, for a model given none, come from."""

    EXAMPLE = "example-inputs"  # the model's own example inputs (transformers' dummy_inputs)
    TRAINER = "trainer"  # made as the model's framework's trainer makes them (torchtitan)


class ParamStatus(Word):
    """What forward did with a parameter, as a backward will see it."""

    USED = "used"  # read, and a use reaches an output: it gets a gradient
    UNUSED = "unused"  # never read
    DEAD = "dead"  # read, but no use reaches an output: no gradient


class Severity(Word):
    """How much something weighs: a finding of a check, a verdict, or neither.

    A check of a plan is an ``ERROR`` (FSDP2 fails, hangs, or computes on a
    shard), a ``WARNING`` (it runs, but gathers what it does not need, or
    holds it) or ``INFO`` (a cost worth knowing); a view's row or message may
    also be ``OK`` (a verdict that all is well) or ``NONE`` (neither).
    """

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"
    OK = "ok"
    NONE = "none"


class AssumptionKind(Word):
    """What a run assumed where it could not know."""

    SELECTION = "every element is kept"  # a meta run's selection from values it lacks
    BACKWARD = "no gradient for what it was not passed"  # a custom Function's unseen backward
    COMPILED = "eager's graph for compiled code"  # compiled code, run eagerly to be recorded
    DRAWN = "this draw of a random value"  # a choice from a random draw (LayerDrop)
    COMPUTED = "this run's values"  # a real run's choice from values of parameters (routing)


class Category(Word):
    """What a CI gate (``--fail-on``) can fail on."""

    UNUSED = "unused"  # trainable parameters never read
    DEAD = "dead"  # trainable parameters read, with no gradient
    EXTERNAL = "external"  # parameters read while none of their modules runs
    BRANCH = "branch"  # a sweep's: used or given a gradient in some combinations only
    ASSUMPTION = "assumption"  # trainable parameters whose status rests on an assumption
    OUTPUTS = "outputs"  # trainable parameters a loss on the main output alone would miss
    REENTRANT = "reentrant"  # trainable parameters given their gradient in several backward passes
    RECOMPUTE_ONLY = "recompute-only"  # given theirs by reentrant checkpoints' recomputes alone


def gate_categories(categories: Iterable[Category | str]) -> tuple[Category, ...]:
    """The categories a gate on ``categories`` fails on, in order, each once.

    Gating on unused or dead gates on assumption too: whether a parameter
    whose status rests on an assumption gets a gradient is not proven.
    Outputs is only gated on when asked: a loss may read every output.
    """
    chosen = tuple(dict.fromkeys(Category(c) for c in categories))
    if {Category.UNUSED, Category.DEAD} & set(chosen):
        chosen = tuple(dict.fromkeys((*chosen, Category.ASSUMPTION)))
    return chosen


def gate(
    findings: Callable[[Category], tuple[str, ...]], categories: Iterable[Category | str]
) -> Mapping[Category, tuple[str, ...]]:
    """What a gate on ``categories`` fails on: each category with ``findings``, and them.

    The rule of ``--fail-on``, shared by reports and sweeps; empty when the gate passes.
    """
    found = {c: findings(c) for c in gate_categories(categories)}
    return MappingProxyType({c: names for c, names in found.items() if names})
