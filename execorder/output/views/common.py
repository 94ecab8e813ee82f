"""Pieces every view uses: facts, cells of parameters and calls, cut tables, times."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from execorder.errors import Arg, Words
from execorder.output.document import (
    Cell,
    Column,
    ColumnKind,
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
from execorder.report import InputSource, ParamInfo
from execorder.report.memory import Choice, Memory, MemoryKind
from execorder.spelling import size_text

NUMBER, FIXED, NAME, TEXT = ColumnKind.NUMBER, ColumnKind.FIXED, ColumnKind.NAME, ColumnKind.TEXT


OWN_PARAMS_SHOWN = 6  # local names listed in "own parameters used" before "+N more"


def show_all(words: Words) -> str:
    return f"{words.arg(Arg.MAX_ROWS, value='0')} shows all"


def cut_rows(
    rows: Sequence[Row], max_rows: int | None, what: str, words: Words
) -> tuple[tuple[Row, ...], tuple[str, ...]]:
    """At most ``max_rows`` rows (None or 0: all), and the line saying how many were left out."""
    if not max_rows or len(rows) <= max_rows:
        return tuple(rows), ()
    left_out = plural(len(rows) - max_rows, f"more {what}")
    return tuple(rows[:max_rows]), (f"{left_out} ({show_all(words)})",)


def fact(name: str, value: str | Cell, severity: Severity = Severity.NONE) -> Row:
    return Row((cell(name), value if isinstance(value, Cell) else cell(value)), severity)


def warn_if(count: int) -> Severity:
    return Severity.WARNING if count else Severity.NONE


def param_cell(param: ParamInfo) -> Cell:
    """A parameter's name and its other (tied) names."""
    if param.aliases:
        return cell(code(param.name), Span(" = " + ", ".join(param.aliases), Tone.MUTED))
    return cell(code(param.name))


def status_cell(param: ParamInfo) -> Cell:
    """What is special about a parameter: dead, frozen, assumed, resting on an assumption."""
    return marks(
        (param.dead, "dead", Tone.ERROR),
        (not param.requires_grad, "frozen", Tone.INFO),
        (param.assumed, "assumed", Tone.MUTED),
        (param.rests_on_assumption, "on assumption", Tone.WARN),
    )


def marks(*marks: tuple[bool, str, Tone]) -> Cell:
    """The words whose flag is set, comma-separated, each in its tone."""
    spans: list[str | Span] = []
    for flag, word, tone in marks:
        if flag:
            spans += [", " if spans else "", Span(word, tone)]
    return cell(*spans)


def first_use(param: ParamInfo) -> str:
    """``#N`` when the parameter's own module first used it, else ``#N module``."""
    if param.first_module == param.owner:
        return f"#{param.first_call}"
    return f"#{param.first_call} {label(param.first_module or '')}"


def time_text(us: float) -> str:
    """A duration in microseconds, as reports write it: ``85 µs``, ``1.2 ms``, ``3.40 s``."""
    if us >= 1e6:
        return f"{us / 1e6:.2f} s"
    if us >= 1e3:
        return f"{us / 1e3:.1f} ms"
    return f"{us:.0f} µs"


MADE = {
    InputSource.EXAMPLE: "the model's own example inputs (its dummy_inputs), as it was given none",
    InputSource.TRAINER: "made from the tokens as torchtitan's trainer makes them",
}
"""Where inputs execorder made came from, for a person."""


def made_inputs(made: Mapping[str, InputSource]) -> dict[InputSource, list[str]]:
    """The inputs execorder made, by where they came from."""
    found: dict[InputSource, list[str]] = {}
    for name, source in made.items():
        found.setdefault(source, []).append(name)
    return found


CHOICES = {
    Choice.MORE_RANKS: "with {ranks} ranks",
    Choice.PREFETCH_ONE: "with prefetch 1",
    Choice.RESHARD: "resharding every unit",
    Choice.CHECKPOINT: "checkpointing units",
    Choice.ALL: "all of these together",
}
"""Each change tried under a budget, as a row of the memory table."""


def _under_ddp(memory: Memory) -> list[Row]:
    """What a DDP replica holds at the peak, where that is known and differs."""
    ddp, buckets = memory.ddp_peak_bytes, memory.ddp_buckets_bytes
    if ddp is None or not buckets:
        return []
    budget = memory.budget_bytes
    over = budget is not None and ddp > budget and not memory.over_budget
    text = (
        f"{size_text(ddp)}{', over the budget' if over else ''}: the peak and DDP's gradient "
        f"buckets, {size_text(buckets)} (a copy of the gradients, made when DDP is built; "
        "at most this with gradient_as_bucket_view=True)"
    )
    return [fact("under DDP", text, Severity.WARNING if over else Severity.NONE)]


def memory_table(memory: Memory, *, title: str, where: str, measured: str) -> Table:
    """A measured training step: the peak and ``where`` it falls, what is alive then, how it
    was ``measured``, the budget, what was assumed, and each change tried under the budget."""
    optimizer = "no optimizer" if memory.optimizer == "none" else f"{memory.optimizer}'s step"
    if memory.optimizer != "none":
        optimizer += (
            " (foreach, as on CUDA)" if memory.foreach else " (a parameter at a time, as on CPU)"
        )
    alive = ", ".join(f"{kind} {size_text(size)}" for kind, size in memory.largest(len(MemoryKind)))
    rows = [
        fact("peak", f"{size_text(memory.peak_bytes)}: step {memory.peak_step}, {where}"),
        fact("alive at the peak", alive or "none"),
        *_under_ddp(memory),
        fact(
            "measured",
            f"{measured}: two steps of forward, backward and {optimizer}; the bytes of "
            "tensors, not kernels' workspace",
        ),
    ]
    budget = memory.budget_bytes
    if budget is not None:
        if memory.over_budget:
            over = size_text(memory.peak_bytes - budget)
            rows.append(fact("budget", f"{size_text(budget)}: exceeded by {over}", Severity.ERROR))
        else:
            rows.append(fact("budget", f"{size_text(budget)}: fits", Severity.OK))
    if memory.assumed:
        rows.append(
            fact(
                "assumed",
                "a selection's size was unknown on meta and taken as keeping every element: "
                "a real step may hold less",
                Severity.WARNING,
            )
        )
    for alternative in memory.alternatives:
        fits = budget is not None and alternative.peak_bytes <= budget
        rows.append(
            fact(
                CHOICES[alternative.choice].format(ranks=f"{alternative.world_size:,}"),
                f"{size_text(alternative.peak_bytes)}: {'fits' if fits else 'still over'}",
                Severity.OK if fits else Severity.NONE,
            )
        )
    return Table(title, (Column(""), Column("", NAME)), tuple(rows), header=False)
