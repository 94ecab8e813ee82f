"""A sharding plan's records: the model's layout, the units, the checks, the plan.

Frozen facts, like a report's: a check holds what it found (the units, the
parameters, the calls, the combinations). Its sentence, and the unit rule's,
are written in the plan's view (:mod:`execorder.output.views.fsdp`), which
``describe`` and ``to_dict`` ask when they are shown or written: the one
place the records reach up a layer, declared in import-linter's contract.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from execorder.analysis.sharding.kinds import (
    SEVERITY_RANK,
    BackwardSource,
    CheckKind,
    Direction,
    LayoutChoice,
    Mistarget,
    ReshardPolicy,
    UnitChoice,
)
from execorder.errors import PYTHON, SchemaError, Words
from execorder.report import SCHEMA_VERSION, InputSource, Severity, jsonable
from execorder.report.memory import Memory
from execorder.report.reading import Fields
from execorder.report.records import read_inputs_made


@dataclass(frozen=True, slots=True)
class LayoutModule:
    """One module of a model, called or not.

    Attributes:
        name: Its first qualified name (``""`` for the root).
        type: Its class name.
        aliases: Its other qualified names.
    """

    name: str
    type: str
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Layout:
    """A model's modules as FSDP sees them, in registration (``named_modules()``) order.

    Attributes:
        modules: Every module, the root first.
        repeated: Classes of the outermost repeated blocks: the items of a
            ``ModuleList``, ``Sequential`` or ``ModuleDict`` holding two or more
            modules of one class with parameters (Llama's decoder layers).
        no_split: The model's ``_no_split_modules``, when it has them (the
            classes transformers' and diffusers' own FSDP wrapping keep whole).
        no_split_from: The library whose class of the model names them
            (``"transformers"``, ``"diffusers"``); empty for the model's own.
    """

    modules: tuple[LayoutModule, ...]
    repeated: tuple[str, ...] = ()
    no_split: tuple[str, ...] = ()
    decoder: DecoderParts | None = None
    no_split_from: str = "transformers"


@dataclass(frozen=True, slots=True)
class DecoderParts:
    """The parts of a decoder a framework's layout shards apart from its blocks.

    Attributes:
        embedding: The input embedding's qualified name, if found.
        norm: The final norm's (the one after the last block), if found.
        head: The output head's, if found.
        tied: The head's weight is the embedding's (weight tying).
        experts: torchtitan's mixture-of-experts blocks: each one's grouped
            experts module and how many experts it holds.
        vision: torchtitan's vision encoder (a VLM's), sharded as one unit.
        base_norm: The last norm among the base model's direct children
            (``model.base_model_prefix``), by class name: the final norm as
            accelerate finds it.
    """

    embedding: str | None = None
    norm: str | None = None
    head: str | None = None
    tied: bool = False
    experts: tuple[tuple[str, int], ...] = ()
    vision: str | None = None
    base_norm: str | None = None


@dataclass(frozen=True, slots=True)
class Unit:
    """One ``fully_shard`` unit: a module or a group of modules, and the parameters it gathers.

    Attributes:
        name: The module's qualified name (``""`` for the root); for a group
            (``fully_shard([norm, lm_head])``), its modules' names joined by
            ``+``.
        type: Its class name; for a group, its modules' joined by ``+``.
        params: How many parameters it gathers: those under it that no
            unit nested inside it holds.
        numel: Their elements.
        bytes: Their bytes in their own dtypes, unsharded.
        bytes_by_dtype: The same, by dtype.
        first_call: Index of the call that first starts it in the module
            order (a group starts when the first of its modules runs); None
            when it never runs in forward.
        calls: How many times its forward starts.
        param_names: The parameters, in ``named_parameters()`` order.
        modules: The modules it shards: one, or a group's.
        reshard_after_forward: Whether it frees its gathered parameters
            after forward (gathering them again for backward).
        gather_bytes: What one all-gather of it produces on each rank: its
            parameters in the plan's param dtype, each padded as FSDP2 pads
            it (dim 0 to a multiple of the world size).
        shard_bytes: What each rank holds of it between gathers: its
            parameters' padded shards, in their own dtypes.
        gathers: How many all-gathers of it one training step issues,
            forward and backward.
    """

    name: str
    type: str
    params: int
    numel: int
    bytes: int
    bytes_by_dtype: Mapping[str, int]
    first_call: int | None
    calls: int
    param_names: tuple[str, ...]
    modules: tuple[str, ...] = ()
    reshard_after_forward: bool = True
    gather_bytes: int = 0
    shard_bytes: int = 0
    gathers: Gathers = field(default_factory=lambda: Gathers(0, 0))

    def __post_init__(self) -> None:
        object.__setattr__(self, "bytes_by_dtype", MappingProxyType(dict(self.bytes_by_dtype)))
        if not self.modules:
            object.__setattr__(self, "modules", (self.name,))

    @property
    def grouped(self) -> bool:
        """Whether it shards more than one module (``fully_shard([a, b])``)."""
        return len(self.modules) > 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "params": self.params,
            "numel": self.numel,
            "bytes": self.bytes,
            "bytes_by_dtype": dict(self.bytes_by_dtype),
            "first_call": self.first_call,
            "calls": self.calls,
            "param_names": list(self.param_names),
            "modules": list(self.modules),
            "reshard_after_forward": self.reshard_after_forward,
            "gather_bytes": self.gather_bytes,
            "shard_bytes": self.shard_bytes,
            "gathers": self.gathers.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "unit") -> Unit:
        """Read one back from :meth:`to_dict` output; a wrong field is a ``SchemaError``.

        A plan written before groups, reshard flags and sizes existed reads
        as single-module units that reshard, with their sizes unknown (0).
        """
        fields = Fields(data, where)
        by_dtype = fields.get("bytes_by_dtype", dict, default={})
        gathers = fields.get("gathers", dict, default={})
        return cls(
            name=fields.get("name", str),
            type=fields.get("type", str),
            params=fields.get("params", int),
            numel=fields.get("numel", int, default=0),
            bytes=fields.get("bytes", int),
            bytes_by_dtype={str(k): int(v) for k, v in by_dtype.items()},
            first_call=fields.get("first_call", int, type(None)),
            calls=fields.get("calls", int, default=0),
            param_names=tuple(fields.items("param_names", str, default=())),
            modules=tuple(fields.items("modules", str, default=())),
            reshard_after_forward=fields.get("reshard_after_forward", bool, default=True),
            gather_bytes=fields.get("gather_bytes", int, default=0),
            shard_bytes=fields.get("shard_bytes", int, default=0),
            gathers=Gathers(int(gathers.get("forward", 0)), int(gathers.get("backward", 0))),
        )


@dataclass(frozen=True, slots=True)
class Gathers:
    """How many all-gathers of a unit one training step issues.

    Attributes:
        forward: In forward: once per start of its forward when it reshards
            after forward, else once.
        backward: In backward: once per start of its forward, since FSDP2
            reshards it after each of their backwards; one fewer when it
            stays gathered after forward (the last start's backward finds it
            gathered). A group counts as one start however many of its
            modules run.
    """

    forward: int
    backward: int

    @property
    def total(self) -> int:
        return self.forward + self.backward

    def to_dict(self) -> dict[str, int]:
        return {"forward": self.forward, "backward": self.backward}


@dataclass(frozen=True, slots=True)
class UnitRule:
    """How a plan's units were chosen.

    Attributes:
        choice: By the caller, by the model's ``_no_split_modules``, by the
            repeated block class, or the root alone; None for a rule read
            from a file, which holds only its words.
        names: The names or classes given, or the classes chosen.
        written: The rule's words as read from a file.
        vision: Under the torchtitan layout, a VLM's vision encoder, one unit.
        source: For ``NO_SPLIT``, the library whose ``_no_split_modules`` they
            are (``"transformers"``, ``"diffusers"``); empty: the model's own.
        left_out: Blocks the rule found that are not units: each shares a
            parameter with another unit (FSDP2 refuses a parameter in two),
            or another call reads its parameters while it is not running
            (FSDP2 would read a shard), so the unit around it holds it.
        read_outside: Those of ``left_out`` left out for the second reason.
        writes_inputs: Those of ``left_out`` left out because they write into a
            list, dict or dataclass they are passed holding a tensor that needs
            grad (FSDP2 would pass them a copy, and the write would be lost).
    """

    choice: UnitChoice | None
    names: tuple[str, ...] = ()
    written: str = ""
    vision: str | None = None
    left_out: tuple[str, ...] = ()
    read_outside: tuple[str, ...] = ()
    writes_inputs: tuple[str, ...] = ()
    source: str = "transformers"

    def describe(self, words: Words = PYTHON) -> str:
        """The rule for a person, naming arguments with ``words`` (its view's words)."""
        from execorder.output.views.fsdp import rule_text

        return rule_text(self, words)

    def __str__(self) -> str:
        return self.describe()


@dataclass(frozen=True, slots=True)
class Check:
    """One thing a plan found that breaks FSDP2 or costs it.

    Attributes:
        kind: What was found.
        severity: How bad it is.
        units: The units involved (for a prefetch, the one that prefetches
            first, then its target).
        params: The parameters involved.
        user: For an external use, the module that read the parameters.
        calls: How many times the unit runs (a repeated unit, or one whose
            registration-order prefetch mistargets because it repeats).
        bytes: For a repeated unit, the bytes gathered on each call.
        direction: For a registration-order prefetch, forward or backward.
        mistarget: For a registration-order prefetch, why it is wrong.
        listed: For a registration-order prefetch, the plan's own list.
        combinations: The concrete arguments involved: those a unit does not
            run with (``VARIES``), the one with another order (``ORDER_VARIES``).
        assumed: For ``ASSUMPTION``, each assumed op and its module; for
            ``RANDOM_CHOICE``, each random function drawn from and its module; for
            ``VALUES_CHOICE``, each read of a value computed from parameters and its
            module.
        reshards: For a repeated unit, whether it reshards after forward (and
            so is gathered on every call).
        budget: For ``MEMORY``, the budget the peak (``bytes``) exceeds.
        largest: For ``MEMORY``, the kinds holding the most at the peak, with
            their bytes.
        checkpoints: For ``SPLIT_GRADIENT``, the model's own checkpoint
            Functions that split it (none: torch's reentrant checkpoint).
        written: The sentence as read from a file (a check read back holds
            only its words); empty for a check a plan found.
    """

    kind: CheckKind
    severity: Severity
    units: tuple[str, ...]
    params: tuple[str, ...]
    user: str = ""
    calls: int = 0
    bytes: int = 0
    direction: Direction | None = None
    mistarget: Mistarget | None = None
    listed: tuple[str, ...] = ()
    combinations: tuple[Mapping[str, Any], ...] = ()
    assumed: tuple[tuple[str, str], ...] = ()
    reshards: bool = True
    budget: int = 0
    largest: tuple[tuple[str, int], ...] = ()
    checkpoints: tuple[str, ...] = ()
    written: str = field(default="", compare=False)

    def describe(self, words: Words = PYTHON) -> str:
        """One or two sentences for a person, naming arguments with ``words`` (its view's)."""
        from execorder.output.views.fsdp import check_message

        return check_message(self, words)

    @property
    def message(self) -> str:
        """The sentence, in Python's words."""
        return self.describe()

    def to_dict(self, words: Words = PYTHON) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "severity": self.severity.value,
            "units": list(self.units),
            "params": list(self.params),
            "message": self.describe(words),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "check") -> Check:
        """Read one back from :meth:`to_dict` output; a wrong field is a ``SchemaError``.

        The JSON holds a check's words, not its facts: the check read back
        keeps its sentence as written.
        """
        fields = Fields(data, where)
        kind, severity = fields.word("kind", CheckKind), fields.word("severity", Severity)
        if severity not in SEVERITY_RANK:
            raise SchemaError(f"{where}: {severity!r} is not a check's severity")
        return cls(
            kind=kind,
            severity=severity,
            units=tuple(fields.items("units", str)),
            params=tuple(fields.items("params", str)),
            written=fields.get("message", str),
        )


@dataclass(frozen=True, slots=True)
class FsdpPlan:
    """Units, prefetch lists and checks for FSDP2, from the order forward really ran.

    Attributes:
        target: What was traced.
        units: The units in forward order (by first call), the root first;
            units that never run come last, in registration order.
        forward_prefetch: For each unit that runs, the units it prefetches in
            forward: the next ``prefetch`` units to start after its first call
            starts (for ``set_modules_to_forward_prefetch``).
        backward_prefetch: For each unit that runs, the units it prefetches
            in backward: the next ``prefetch`` in the order their gradients
            are needed (for ``set_modules_to_backward_prefetch``).
        checks: What breaks FSDP2 or costs it, most severe first.
        prefetch: How many units each list names, at most.
        unit_rule: How the units were chosen.
        backward_from: ``RECORDED`` when a real backward gave the backward
            order, else ``REVERSE`` (the reverse of forward's).
        mode: The report's mode.
        concrete_args: The concrete arguments of the run the plan follows.
        seed: The run's seed.
        combinations: With a sweep, the concrete arguments of every run checked,
            the one the plan follows first.
        layout: The layout of units asked for.
        reshard_after_forward: The policy each unit's flag follows.
        world_size: The ranks the units are sharded over.
        param_dtype: The dtype parameters are gathered and computed in
            (FSDP2's ``MixedPrecisionPolicy.param_dtype``); None: their own.
        reduce_dtype: The dtype gradients are reduced in; None: FSDP2's
            default (the param dtype).
        inputs_made: The inputs execorder made itself for the run the plan
            follows, and where from (see ``Report.inputs_made``).
        memory: What one rank holds in a training step under the plan, when
            measured (``execorder.fsdp.plan_memory``); None otherwise.
        shard_dims: The parameters FSDP2 shards on another dim than 0, by
            name (torchtitan's layout shards a mixture of experts' weights
            on dim 1 when there are more ranks than experts); empty: all on 0.
    """

    target: str
    units: tuple[Unit, ...]
    forward_prefetch: Mapping[str, tuple[str, ...]]
    backward_prefetch: Mapping[str, tuple[str, ...]]
    checks: tuple[Check, ...]
    prefetch: int = 1
    unit_rule: UnitRule = UnitRule(UnitChoice.ROOT_ALONE)
    backward_from: BackwardSource = BackwardSource.REVERSE
    mode: str = "eager"
    concrete_args: Mapping[str, Any] = field(default_factory=dict)
    seed: int | None = None
    combinations: tuple[Mapping[str, Any], ...] = ()
    layout: LayoutChoice = LayoutChoice.BLOCKS
    reshard_after_forward: ReshardPolicy = ReshardPolicy.DEFAULT
    world_size: int = 1
    param_dtype: str | None = None
    reduce_dtype: str | None = None
    inputs_made: Mapping[str, InputSource] = field(default_factory=dict)
    memory: Memory | None = None
    shard_dims: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        made = {k: InputSource(v) for k, v in self.inputs_made.items()}
        object.__setattr__(self, "inputs_made", MappingProxyType(made))
        object.__setattr__(self, "shard_dims", MappingProxyType(dict(self.shard_dims)))
        for name in ("forward_prefetch", "backward_prefetch"):
            lists = {k: tuple(v) for k, v in getattr(self, name).items()}
            object.__setattr__(self, name, MappingProxyType(lists))
        frozen_args = MappingProxyType({k: jsonable(v) for k, v in self.concrete_args.items()})
        object.__setattr__(self, "concrete_args", frozen_args)

    def unit(self, name: str) -> Unit:
        """The unit of that qualified name.

        Raises:
            KeyError: If there is none.
        """
        for unit in self.units:
            if unit.name == name:
                return unit
        raise KeyError(name)

    def failing(self, gates: Iterable[Severity | CheckKind]) -> tuple[Check, ...]:
        """The checks a gate fails on: a severity gates on it and worse, a kind on itself,
        and a memory check always (a budget given is a gate of its own)."""
        chosen = tuple(gates)
        worst = max((SEVERITY_RANK[g] for g in chosen if isinstance(g, Severity)), default=-1)
        kinds = {g for g in chosen if isinstance(g, CheckKind)} | {CheckKind.MEMORY}
        return tuple(
            c for c in self.checks if c.kind in kinds or SEVERITY_RANK[c.severity] <= worst
        )

    def count(self, severity: Severity) -> int:
        """How many checks have that severity."""
        return sum(1 for c in self.checks if c.severity is severity)

    def to_dict(self, words: Words = PYTHON) -> dict[str, Any]:
        """The plan as JSON data; its sentences name arguments with ``words``."""
        total = sum(u.bytes for u in self.units)
        return {
            "kind": "fsdp-plan",
            "schema_version": SCHEMA_VERSION,
            "target": self.target,
            "mode": self.mode,
            "concrete_args": dict(self.concrete_args),
            "seed": self.seed,
            "combinations": [{k: jsonable(v) for k, v in c.items()} for c in self.combinations],
            "prefetch": self.prefetch,
            "layout": self.layout.value,
            "reshard_after_forward": self.reshard_after_forward.value,
            "world_size": self.world_size,
            "param_dtype": self.param_dtype,
            "reduce_dtype": self.reduce_dtype,
            "unit_rule": self.unit_rule.describe(words),
            **(
                {"units_left_out": list(self.unit_rule.left_out)} if self.unit_rule.left_out else {}
            ),
            **(
                {"units_read_outside": list(self.unit_rule.read_outside)}
                if self.unit_rule.read_outside
                else {}
            ),
            **(
                {"units_writing_inputs": list(self.unit_rule.writes_inputs)}
                if self.unit_rule.writes_inputs
                else {}
            ),
            "backward_from": self.backward_from.value,
            "units": [unit.to_dict() for unit in self.units],
            "forward_prefetch": {k: list(v) for k, v in self.forward_prefetch.items()},
            "backward_prefetch": {k: list(v) for k, v in self.backward_prefetch.items()},
            "checks": [check.to_dict(words) for check in self.checks],
            **(
                {"inputs_made": {k: v.value for k, v in self.inputs_made.items()}}
                if self.inputs_made
                else {}
            ),
            **({"memory": self.memory.to_dict()} if self.memory is not None else {}),
            **({"shard_dims": dict(self.shard_dims)} if self.shard_dims else {}),
            "summary": {
                "units": len(self.units),
                "bytes": total,
                "largest_unit_bytes": max((u.bytes for u in self.units), default=0),
                "gather_bytes": sum(u.gather_bytes for u in self.units),
                "shard_bytes": sum(u.shard_bytes for u in self.units),
                **{severity.value: self.count(severity) for severity in SEVERITY_RANK},
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FsdpPlan:
        """Rebuild a plan from :meth:`to_dict` output (e.g. loaded JSON).

        Raises:
            SchemaError: If it is not a plan of this schema version, or a field
                is missing or of the wrong type.
        """
        if not isinstance(data, Mapping) or data.get("kind") != "fsdp-plan":
            raise SchemaError('not an FSDP plan (its "kind" is not "fsdp-plan")')
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise SchemaError(
                f"plan has schema_version {version!r}; this execorder reads {SCHEMA_VERSION}"
            )
        fields = Fields(data, "")
        lists = {}
        for key in ("forward_prefetch", "backward_prefetch"):
            raw = fields.get(key, dict)
            for name, targets in raw.items():
                if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
                    raise SchemaError(f"{key}.{name} must be a list of unit names")
            lists[key] = raw
        backward_from = fields.word("backward_from", BackwardSource, default=BackwardSource.REVERSE)
        layout = fields.word("layout", LayoutChoice, default=LayoutChoice.BLOCKS)
        # A plan written before the policy existed was sharded with FSDP2's defaults.
        policy = fields.word("reshard_after_forward", ReshardPolicy, default=ReshardPolicy.ALWAYS)
        return cls(
            target=fields.get("target", str),
            units=tuple(Unit.from_dict(u.data, u.where) for u in fields.objects("units")),
            forward_prefetch=lists["forward_prefetch"],
            backward_prefetch=lists["backward_prefetch"],
            checks=tuple(Check.from_dict(c.data, c.where) for c in fields.objects("checks")),
            prefetch=fields.get("prefetch", int, default=1),
            unit_rule=UnitRule(
                None,
                written=fields.get("unit_rule", str, default=""),
                left_out=tuple(fields.items("units_left_out", str, default=())),
                read_outside=tuple(fields.items("units_read_outside", str, default=())),
                writes_inputs=tuple(fields.items("units_writing_inputs", str, default=())),
            ),
            backward_from=backward_from,
            mode=fields.get("mode", str, default="eager"),
            concrete_args=fields.get("concrete_args", dict, default={}),
            seed=fields.get("seed", int, type(None), default=None),
            combinations=tuple(fields.get("combinations", list, default=[])),
            layout=layout,
            reshard_after_forward=policy,
            world_size=fields.get("world_size", int, default=1),
            param_dtype=fields.get("param_dtype", str, type(None), default=None),
            reduce_dtype=fields.get("reduce_dtype", str, type(None), default=None),
            inputs_made=read_inputs_made(fields.get("inputs_made", dict, default={})),
            memory=None
            if fields.get("memory", dict, type(None), default=None) is None
            else Memory.from_dict(data["memory"]),
            shard_dims=_shard_dims(fields.get("shard_dims", dict, default={})),
        )


def _shard_dims(raw: Mapping[str, Any]) -> dict[str, int]:
    """``shard_dims`` read back: parameter names to the dim FSDP2 shards them on."""
    for name, dim in raw.items():
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 0:
            raise SchemaError(f"shard_dims.{name} must be a dimension (0 or more), not {dim!r}")
    return dict(raw)
