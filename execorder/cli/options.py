"""The command line's options, each defined once and shared by the commands that take it."""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar, get_type_hints

import typer

from execorder.analysis.sharding.kinds import CheckKind, LayoutChoice, ReshardPolicy
from execorder.cli.values import parse_assignments, parse_size
from execorder.cli.words import UsageError
from execorder.report.kinds import Mode

F = TypeVar("F", bound=Callable[..., Any])


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    markdown = "markdown"
    tree = "tree"
    perfetto = "perfetto"


class Device(str, Enum):
    meta = "meta"
    cpu = "cpu"
    cuda = "cuda"


TargetArg = Annotated[
    str,
    typer.Argument(
        metavar="TARGET",
        help="The model: 'package.module:Attr' or 'path/to/file.py:Attr', where Attr is "
        "an nn.Module subclass, a function returning one, or an nn.Module instance.",
    ),
]
ConcreteOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--concrete",
        "-c",
        metavar="NAME=VALUE",
        help="A fixed value for a forward() argument, e.g. a flag that picks a branch "
        "(repeatable). VALUE: true/false, none, numbers, JSON, Python literals or text.",
    ),
]
InitOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--init",
        "-i",
        metavar="NAME=VALUE",
        help="A keyword argument for the model's constructor or factory (repeatable).",
    ),
]
DeviceOpt = Annotated[
    Device | None,
    typer.Option(
        help="Where to build (and in eager mode run) the model. Default: meta (no "
        "memory; what the inputs alone decide is computed), falling back to cpu when "
        "values computed from parameters are needed and the model fits in memory.",
    ),
]
FormatOpt = Annotated[
    OutputFormat,
    typer.Option(
        "--format",
        "-f",
        help="table for people, json for CI, markdown for pull requests; for trace and fsdp "
        "also tree (the calls as a tree, repeated blocks folded) and perfetto (a timeline "
        "for ui.perfetto.dev or chrome://tracing).",
    ),
]
TimingOpt = Annotated[
    bool,
    typer.Option(
        "--timing",
        help="Eager mode: measure each module call's wall time (on cpu unless --device cuda; "
        "CUDA events on a GPU) and show the slowest modules; --format perfetto draws them.",
    ),
]
OutputOpt = Annotated[
    Path | None,
    typer.Option(
        "--output",
        "-o",
        metavar="FILE",
        help="Write the report to FILE instead of stdout.",
        dir_okay=False,
    ),
]
DepthOpt = Annotated[
    int | None,
    typer.Option(
        min=0,
        metavar="N",
        help="Table: hide module calls nested deeper than N (JSON always has all).",
    ),
]
MaxRowsOpt = Annotated[
    int, typer.Option(min=0, metavar="N", help="Table: at most N rows per table; 0 shows all.")
]
SeedOpt = Annotated[
    int,
    typer.Option(
        "--seed",
        metavar="N",
        help="The seed of the model's build, the generated inputs and the run (torch's, "
        "Python's and NumPy's generators): a model whose "
        "routing depends on random values, or that drops layers at random, gives the same "
        "answer on every run.",
    ),
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")]


class OptimizerName(str, Enum):
    adamw = "adamw"
    sgd = "sgd"
    none = "none"


MemoryOpt = Annotated[
    bool,
    typer.Option(
        "--memory",
        help="Run two training steps (forward, backward, --optimizer's step) where the model "
        "is (on meta: no memory) and show what they hold: the peak, when it falls (phase and "
        "module call #), and what is alive then by kind.",
    ),
]
OptimizerOpt = Annotated[
    OptimizerName,
    typer.Option("--optimizer", help="The optimizer --memory steps (its states count)."),
]
ForeachOpt = Annotated[
    bool,
    typer.Option(
        "--foreach/--no-foreach",
        help="With --memory: step the optimizer as torch does on CUDA, each update for all "
        "parameters at once (its temporaries as large as them); --no-foreach: one parameter "
        "at a time, as on CPU.",
    ),
]
MemoryBudgetOpt = Annotated[
    str | None,
    typer.Option(
        "--memory-budget",
        metavar="SIZE",
        help="With --memory: exit 1 when the peak exceeds SIZE (80GiB, 40GB, 512MiB, bytes). "
        "Default with --device cuda: the device's memory.",
    ),
]
ModeOpt = Annotated[
    Mode,
    typer.Option(
        "--mode",
        help="fx traces symbolically (no inputs needed); eager runs forward for real "
        "(needs --input or --inputs; any model); auto runs eagerly on the inputs given, "
        "and traces with fx when there are none.",
    ),
]
InputOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--input",
        metavar="[NAME=]DTYPE[D0,...]",
        help="Eager mode: a tensor argument of forward (repeatable): named, a keyword "
        "argument (x=float32[2,6]); unnamed, the next positional one ([2,6] is float32). "
        "input_ids=int64[1,32]@0:32000 draws integers in [0, 32000); without a range "
        "integers are zeros.",
    ),
]
InputsOpt = Annotated[
    str | None,
    typer.Option(
        "--inputs",
        metavar="MODULE:FUNCTION",
        help="Eager mode: a function returning forward's arguments: a tuple, a dict of "
        "keyword arguments, or (tuple, dict). It may take a 'device' keyword.",
    ),
]
BackwardOpt = Annotated[
    bool,
    typer.Option(
        "--backward",
        help="Eager mode: also run backward and show the order in which gradients are "
        "accumulated (the order DDP's reducer and FSDP's prefetching see).",
    ),
]
AssumeOpt = Annotated[
    bool,
    typer.Option(
        "--assume/--no-assume",
        help="On meta: assume a selection made from values computed from parameters (a "
        "router's nonzero or boolean mask) keeps every element, and mark what rests on it. "
        "--no-assume needs real values for it instead: the model runs on cpu if it fits.",
    ),
]
FailOnOpt = Annotated[
    str | None,
    typer.Option(
        "--fail-on",
        metavar="CATEGORIES",
        help="CI gate: after the report, exit 1 if a listed category is non-empty. "
        "Comma-separated: unused, dead, external, assumption (a status resting on one), "
        "outputs (reached only through outputs other than the main one), reentrant (a "
        "gradient in several backward passes), recompute-only (a gradient from reentrant "
        "recomputes only); with --sweep, branch (used in some combinations only) instead "
        "of the last three. unused, dead and assumption count trainable parameters; "
        "unused and dead also fail on assumption.",
    ),
]
SweepOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--sweep",
        metavar="NAME=V1,V2,...",
        help="Trace every combination of these forward() argument values (repeatable: the "
        "cross product) and show which parameters are used always, in some combinations "
        "only (branch-dependent), or never.",
    ),
]
BaselineOpt = Annotated[
    Path | None,
    typer.Option(
        "--baseline",
        metavar="FILE",
        help="Compare with this stored JSON report and print the differences instead of "
        "the report; exit 1 if they differ.",
        dir_okay=False,
    ),
]
UpdateBaselineOpt = Annotated[
    bool,
    typer.Option("--update-baseline", help="Write the new report to the --baseline FILE."),
]
IndicesArg = Annotated[
    str,
    typer.Argument(
        metavar="INDICES",
        help="The indices from DDP's error, e.g. '0 1 2 5 6 7' (or paste the whole "
        "'Parameter indices which did not receive grad for rank 0: ...' line).",
    ),
]
UnitOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--unit",
        "-u",
        metavar="CLASS_OR_NAME",
        help="Shard every module of this class (LlamaDecoderLayer) or with this qualified "
        "name (model.layers.0) as an FSDP2 unit (repeatable); names joined by + "
        "(model.norm+lm_head) are one unit, fully_shard([a, b]). Default: the --layout. "
        "The root is always a unit and holds the rest.",
    ),
]


class DtypeName(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


LayoutOpt = Annotated[
    LayoutChoice,
    typer.Option(
        "--layout",
        help="The units when --unit is not given. blocks: the model's _no_split_modules "
        "(transformers', diffusers'), else the class of its repeated blocks; torchtitan: "
        "torchtitan's apply_fsdp_to_decoder; accelerate: accelerate's FSDP2 preparation of "
        "a transformers model.",
    ),
]
ReshardOpt = Annotated[
    ReshardPolicy,
    typer.Option(
        "--reshard-after-forward",
        help="Which units free their parameters after forward. default: torchtitan's rule "
        "(every unit but the root and the one forward ends in, which backward needs first); "
        "always: every unit but the root; never: none.",
    ),
]
WorldSizeOpt = Annotated[
    int,
    typer.Option(
        "--world-size",
        min=1,
        metavar="N",
        help="The ranks the units are sharded over: each unit's bytes per rank (FSDP2 pads "
        "dim 0 to a multiple of N) and per all-gather.",
    ),
]
ParamDtypeOpt = Annotated[
    DtypeName | None,
    typer.Option(
        "--param-dtype",
        help="The dtype parameters are gathered and computed in (MixedPrecisionPolicy"
        ".param_dtype). Default: their own.",
    ),
]
ReduceDtypeOpt = Annotated[
    DtypeName | None,
    typer.Option(
        "--reduce-dtype",
        help="The dtype gradients are reduced in (MixedPrecisionPolicy.reduce_dtype).",
    ),
]
PrefetchOpt = Annotated[
    int,
    typer.Option(
        "--prefetch",
        min=1,
        metavar="N",
        help="How many units each unit prefetches (FSDP2 gathers them early: more overlap, "
        "more memory).",
    ),
]
FsdpSweepOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--sweep",
        metavar="NAME=V1,V2,...",
        help="Also run every combination of these forward() argument values (repeatable) "
        "and check that every unit runs, in the same order, for all of them: ranks that "
        "disagree on a unit hang in its all-gather.",
    ),
]
FsdpFailOnOpt = Annotated[
    str | None,
    typer.Option(
        "--fail-on",
        metavar="SEVERITY|CHECKS",
        help="CI gate: exit 1 if a check of this severity or worse is found (error, warning, "
        f"info), or one of these checks (comma-separated: {', '.join(CheckKind)}).",
    ),
]
NprocOpt = Annotated[
    int | None,
    typer.Option(
        "--nproc",
        min=1,
        metavar="N",
        help="Start N ranks on this machine (one process each) and compare them; without it, "
        "run each rank under torchrun (torchrun --nproc-per-node N -m execorder ranks ...).",
    ),
]
RankSeedOpt = Annotated[
    int | None,
    typer.Option(
        "--seed",
        metavar="N",
        help="The seed of every rank's generated inputs and run. Default: rank r draws with "
        "seed r, as ranks of a job draw differently (the model is built with seed 0 on every "
        "rank, as DDP starts every rank from the same weights).",
    ),
]
TimeoutOpt = Annotated[
    int,
    typer.Option(
        "--timeout",
        min=1,
        metavar="SECONDS",
        help="How long a rank waits for the others in the process group before giving up.",
    ),
]
RanksFailOnOpt = Annotated[
    str | None,
    typer.Option(
        "--fail-on",
        metavar="divergence",
        help="CI gate: exit 1 if the ranks diverged.",
    ),
]


@dataclass(frozen=True, slots=True)
class ModelOptions:
    """The options that say which model runs and how, defined once for every command.

    :func:`model_command` gives a command these as its own options and hands
    them to it as one value.
    """

    target: TargetArg
    concrete: ConcreteOpt = None
    init: InitOpt = None
    device: DeviceOpt = None
    mode: ModeOpt = Mode.AUTO
    input: InputOpt = None
    inputs: InputsOpt = None
    backward: BackwardOpt = False
    assume: AssumeOpt = True
    seed: SeedOpt = 0
    timing: TimingOpt = False
    memory: MemoryOpt = False
    optimizer: OptimizerOpt = OptimizerName.adamw
    foreach: ForeachOpt = True
    memory_budget: MemoryBudgetOpt = None
    debug: DebugOpt = False
    given: frozenset[str] = dataclasses.field(default=frozenset(), metadata={"option": False})
    """The options given on the command line, not left at their defaults."""

    def check(self) -> None:
        """Refuse an option of the memory's step given without ``--memory``."""
        for name, flag in MEMORY_ONLY.items():
            if name in self.given and not self.memory:
                raise UsageError(f"{flag} needs --memory")

    def concrete_args(self) -> dict[str, Any]:
        """``--concrete``, read."""
        return parse_assignments(self.concrete or [], option="--concrete")

    def init_kwargs(self) -> dict[str, Any]:
        """``--init``, read."""
        return parse_assignments(self.init or [], option="--init")

    def reads(self) -> dict[Path, str]:
        """The files the run reads, which a report must not be written over."""
        from execorder.loading import target_file

        files = {}
        if (model := target_file(self.target)) is not None:
            files[model] = "the model's file (TARGET)"
        if self.inputs and (inputs := target_file(self.inputs)) is not None:
            files[inputs] = "the --inputs file"
        return files

    def budget(self) -> int | None:
        """``--memory-budget``, read."""
        if self.memory_budget is None:
            return None
        return parse_size(self.memory_budget, option="--memory-budget")


MEMORY_ONLY = {"optimizer": "--optimizer", "foreach": "--foreach/--no-foreach"}
"""Options that say how --memory steps, and mean nothing without it."""

LAST = ("debug",)
"""Model options listed after the command's own."""


def model_command(*, omit: tuple[str, ...] = (), **replace: tuple[Any, Any]) -> Callable[[F], F]:
    """Give a command the model options, where its ``options: ModelOptions`` parameter is.

    The command lists only its own options; ``omit`` names the model options
    it does not take (they keep their defaults), and ``replace`` gives one
    another annotation and default (``seed=(RankSeedOpt, None)``).
    """
    hints = get_type_hints(ModelOptions, include_extras=True)
    shared = [
        inspect.Parameter(
            field.name,
            inspect.Parameter.KEYWORD_ONLY,
            annotation=replace.get(field.name, (hints[field.name],))[0],
            default=replace[field.name][1] if field.name in replace else _default(field),
        )
        for field in dataclasses.fields(ModelOptions)
        if field.name not in omit and field.metadata.get("option", True)
    ]

    def decorate(command: F) -> F:
        own = inspect.signature(command, eval_str=True).parameters
        takes_ctx = "ctx" in own
        first = [] if takes_ctx else [_ctx_parameter()]
        params = []
        for param in own.values():
            if param.name == "options":
                params += [p for p in shared if p.name not in LAST]
            else:
                params.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY))
        params += [p for p in shared if p.name in LAST]

        @functools.wraps(command)
        def run(**values: Any) -> Any:
            ctx = values["ctx"] if takes_ctx else values.pop("_ctx")
            given = frozenset(n for n in values if _given(ctx, n))
            model = {p.name: values.pop(p.name) for p in shared}
            return command(options=ModelOptions(**model, given=given), **values)

        run.__signature__ = inspect.Signature(first + params)  # type: ignore[attr-defined]
        return run  # type: ignore[return-value]

    return decorate


def _default(field: dataclasses.Field[Any]) -> Any:
    return inspect.Parameter.empty if field.default is dataclasses.MISSING else field.default


def _ctx_parameter() -> inspect.Parameter:
    return inspect.Parameter("_ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)


def _given(ctx: Any, name: str) -> bool:
    """Whether option ``name`` was given on the command line (click's source, via Typer)."""
    return getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"
