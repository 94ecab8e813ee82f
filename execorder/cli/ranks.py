"""The ``ranks`` command: where the ranks of a job part, under torchrun or ``--nproc``."""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any

import typer

from execorder.cli.app import Command, app, run_command
from execorder.cli.options import (
    FormatOpt,
    ModelOptions,
    ModeOpt,
    NprocOpt,
    OutputFormat,
    OutputOpt,
    RankSeedOpt,
    RanksFailOnOpt,
    TimeoutOpt,
    model_command,
)
from execorder.cli.session import Session, say
from execorder.cli.values import parse_choices
from execorder.cli.words import EXIT_ERROR, EXIT_FOUND, UsageError, message
from execorder.cli.writing import emit
from execorder.errors import ExecOrderError
from execorder.output import files
from execorder.report.kinds import Mode


def forwarded_args(ctx: Any, *, drop: tuple[str, ...] = ()) -> list[str]:
    """The command line that gives a command every parameter ``ctx`` was given, but ``drop``.

    Read from the command's own parameters, so an option added to it is
    forwarded with no list to keep.
    """
    arguments: list[str] = []
    options: list[str] = []
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name)
        if param.name in drop or source is None or source.name in ("DEFAULT", "DEFAULT_MAP"):
            continue
        value = ctx.params[param.name]
        if param.param_type_name == "argument":
            arguments.append(str(value))
        elif param.is_flag and param.secondary_opts:
            options.append(param.opts[0] if value else param.secondary_opts[0])
        elif param.is_flag:
            options += [param.opts[0]] if value else []
        else:
            for item in value if param.multiple else [value]:
                options += [param.opts[0], str(getattr(item, "value", item))]
    return [*arguments, *options]


def _preflight(options: ModelOptions) -> None:
    """Load what every rank loads, once, before any rank starts: a mistake is one error."""
    from execorder.loading import resolve_inputs, resolve_target

    options.init_kwargs()
    options.concrete_args()
    if options.inputs:
        resolve_inputs(options.inputs)
    resolve_target(options.target)


@app.command(cls=Command)
@model_command(
    omit=("timing", "memory", "optimizer", "foreach", "memory_budget"),
    mode=(ModeOpt, Mode.EAGER),
    seed=(RankSeedOpt, None),
)
def ranks(
    ctx: typer.Context,
    *,
    nproc: NprocOpt = None,
    options: ModelOptions,
    fmt: FormatOpt = OutputFormat.table,
    output: OutputOpt = None,
    fail_on: RanksFailOnOpt = None,
    timeout: TimeoutOpt = 300,
) -> None:
    """Find where the ranks of a job part, before it hangs the job.

    Runs one forward on every rank (eagerly), under torchrun (one process a
    rank) or started by --nproc N. Each rank records its own forward on its
    own inputs (an --inputs function may take rank and world_size keywords)
    with its own seed; the ranks exchange 48-byte digests over
    torch.distributed (gloo on CPU, NCCL on GPUs), and rank 0 shows whether
    they agree, the groups of ranks that behaved alike, the first module call
    where they part, and the parameters whose status (used, unused, dead)
    differs: what DDP and FSDP hang, fail or mix up gradients on (FSDP2 reduces
    one rank's gradient of one parameter with another's of another, with no
    error).

    Exit codes: 0 done; 1 --fail-on divergence and the ranks diverged; 2 a
    rank could not record its forward, or the job could not start; 130
    interrupted.
    """
    # Every rank builds with seed 0, as DDP starts every rank from the same
    # weights; --seed (or the rank) seeds the inputs and the run.
    seed = options.seed
    model = dataclasses.replace(options, seed=0 if seed is None else seed)
    in_job = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank = int(os.environ["RANK"]) if in_job else 0

    def check() -> None:  # before any rank starts
        parse_choices(
            fail_on, {"divergence": True}, option="--fail-on", hint="the only check is: divergence"
        )
        if fmt in (OutputFormat.tree, OutputFormat.perfetto):
            raise UsageError(f"--format {fmt.value} applies to trace and fsdp, not ranks")
        if model.mode is not Mode.FX and not model.input and not model.inputs:
            raise UsageError(
                "ranks part on their data: give each rank its inputs with --input (drawn "
                "with each rank's seed) or --inputs MODULE:FUNCTION (it may take rank and "
                "world_size)"
            )
        if nproc is None and not in_job:
            raise UsageError(
                "execorder ranks runs as one process a rank: give --nproc N, or launch it "
                "with torchrun --nproc-per-node N -m execorder ranks TARGET ..."
            )
        if output is not None and rank == 0:
            files.check_writable(output, reads=model.reads())
        _preflight(model)

    if rank == 0:
        run_command(model.debug, check)
    else:  # rank 0 says what is wrong, once; the others only leave as it does
        try:
            check()
        except Exception:
            raise typer.Exit(EXIT_ERROR) from None
    if nproc is not None and not in_job:
        raise typer.Exit(launch(nproc, forwarded_args(ctx, drop=("nproc",)), timeout))

    def body() -> None:
        from execorder.output.views import ranks_view
        from execorder.ranks import compare_job

        def record(rank: int, world: int) -> Any:
            session = Session(
                model, input_keywords={"rank": rank, "world_size": world}, quiet=rank != 0
            )
            return session.run(model.concrete_args(), seed=seed if seed is not None else rank)

        def explain(exc: Exception) -> str:
            if isinstance(exc, ExecOrderError):
                return message(exc)
            return f"internal error: {type(exc).__name__}: {exc}"

        rank, result = compare_job(
            record,
            device=model.device.value if model.device else None,
            timeout=timeout,
            target=model.target,
            explain=explain,
        )
        if rank == 0:
            emit(result, lambda: ranks_view(result), fmt, output, kind="rank comparison")
        if result.errors:
            if rank == 0:
                for failed in result.errors:
                    ranks_text = ", ".join(map(str, failed.ranks))
                    say(f"execorder: error: on rank {ranks_text}: {failed.error}")
            raise typer.Exit(EXIT_ERROR)
        if fail_on is not None and result.diverged:
            if rank == 0:
                say(f"execorder: check failed: divergence: {len(result.groups)} groups of ranks")
            raise typer.Exit(EXIT_FOUND)

    run_command(model.debug, body)


def launch(nproc: int, args: list[str], timeout: int) -> int:
    """Run ``execorder ranks ARGS`` as ``nproc`` ranks; the exit code to leave with."""
    from execorder.ranks import launch as start

    exits = start([sys.executable, "-m", "execorder", "ranks", *args], nproc, timeout=timeout)
    first, others = exits[0], exits[1:]
    if first.stdout:  # rank 0's result
        sys.stdout.write(first.stdout)
        sys.stdout.flush()
    failed = [e for e in others if e.code not in (0, 1)]
    for rank in failed:
        lines = [line for line in rank.stderr.splitlines() if line.strip()]
        if not lines and rank.code == EXIT_ERROR == first.code:
            continue  # a rank's error is in rank 0's result: it said it already
        said = f": {' | '.join(lines[-3:])}" if lines else " (it wrote nothing)"
        say(f"execorder: rank {rank.rank} failed (exit {rank.code}){said}")
    if failed and first.code in (0, 1):
        return EXIT_ERROR
    return first.code
