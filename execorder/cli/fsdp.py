"""The ``fsdp`` command: an FSDP2 plan, its checks, and its gate."""

from __future__ import annotations

from functools import partial
from typing import Any

import typer

from execorder.analysis.sharding.kinds import LayoutChoice, ReshardPolicy
from execorder.cli.app import Command, app, run_command
from execorder.cli.options import (
    FormatOpt,
    FsdpFailOnOpt,
    FsdpSweepOpt,
    LayoutOpt,
    ModelOptions,
    OutputFormat,
    OutputOpt,
    ParamDtypeOpt,
    PrefetchOpt,
    ReduceDtypeOpt,
    ReshardOpt,
    UnitOpt,
    WorldSizeOpt,
    model_command,
)
from execorder.cli.session import Session, said
from execorder.cli.values import parse_choices, parse_sweep
from execorder.cli.words import CLI, EXIT_FOUND
from execorder.cli.writing import emit, timeline_of, tree_view_of
from execorder.output import files


def _parse_gates(text: str | None) -> tuple[Any, ...]:
    """An FSDP plan's --fail-on: severities (that and worse) or check kinds."""
    from execorder.analysis.sharding import SEVERITY_RANK, CheckKind

    known: dict[str, Any] = {s.value: s for s in SEVERITY_RANK} | {k.value: k for k in CheckKind}
    hint = (
        f"choose a severity ({', '.join(s.value for s in SEVERITY_RANK)}) or checks "
        f"({', '.join(k.value for k in CheckKind)}), comma-separated"
    )
    return parse_choices(text, known, option="--fail-on", hint=hint)


@app.command(cls=Command)
@model_command(omit=("timing",))
def fsdp(
    *,
    unit: UnitOpt = None,
    layout: LayoutOpt = LayoutChoice.BLOCKS,
    prefetch: PrefetchOpt = 1,
    reshard_after_forward: ReshardOpt = ReshardPolicy.DEFAULT,
    world_size: WorldSizeOpt = 1,
    param_dtype: ParamDtypeOpt = None,
    reduce_dtype: ReduceDtypeOpt = None,
    options: ModelOptions,
    fmt: FormatOpt = OutputFormat.table,
    output: OutputOpt = None,
    fail_on: FsdpFailOnOpt = None,
    sweep: FsdpSweepOpt = None,
) -> None:
    """Plan FSDP2 (fully_shard) from the order forward really runs.

    Picks the units, gives each unit's forward and backward prefetch lists
    (for set_modules_to_forward_prefetch and set_modules_to_backward_prefetch)
    from the recorded order, and checks what breaks FSDP2: a unit's parameters
    read outside its forward, a parameter in two units, units that never run,
    run twice, or (with --sweep) run for some values only, and where lists
    built from registration order would prefetch the wrong unit. With
    --backward the backward lists follow a real backward. Apply a JSON plan
    with execorder.fsdp.apply (after your own fully_shard calls) or
    execorder.fsdp.shard.

    Exit codes: 0 done; 1 a --fail-on check was found; 2 the plan could not
    be made (one line on stderr says why); 130 interrupted; 141 the reader of
    stdout stopped.
    """

    def body() -> None:
        from execorder.fsdp import plan_and_report, plan_memory
        from execorder.output.views import fsdp_view

        gates = _parse_gates(fail_on)
        concrete_args = options.concrete_args()
        axes = [parse_sweep(text) for text in sweep or []]
        if output is not None:
            files.check_writable(output, reads=options.reads())
        session = Session(options, one_device=False)
        plan, report = session.work(
            partial(
                plan_and_report,
                concrete_args=concrete_args,
                sweep=axes,
                units=list(unit or []),
                prefetch=prefetch,
                layout=layout,
                reshard_after_forward=reshard_after_forward,
                world_size=world_size,
                param_dtype=param_dtype.value if param_dtype else None,
                reduce_dtype=reduce_dtype.value if reduce_dtype else None,
            )
        )
        if options.memory:
            plan = session.work(
                partial(
                    plan_memory,
                    plan=plan,
                    report=report,
                    optimizer=options.optimizer.value,
                    foreach=options.foreach,
                    budget=options.budget(),
                    concrete_args=concrete_args,
                ),
                f"Measuring one of {plan.world_size} ranks' training step",
            )
        emit(
            plan,
            lambda: fsdp_view(plan, words=CLI),
            fmt,
            output,
            kind="FSDP plan",
            data=lambda: plan.to_dict(words=CLI),
            tree=tree_view_of(report, plan=plan),
            timeline=timeline_of(report, plan),
        )
        from execorder.output.views.gates import plan_gate_lines

        failing = plan.failing(gates)
        said(plan_gate_lines(failing, CLI))
        if failing:
            raise typer.Exit(EXIT_FOUND)

    run_command(options.debug, body)
