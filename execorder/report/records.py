"""Frozen report records: what a trace found, as immutable facts.

No presentation lives here: names are qualified names (the root module is
``""``), shapes are tuples, and drawing them is the job of
:mod:`execorder.output`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from execorder.errors import SchemaError
from execorder.report.kinds import AssumptionKind, Category, InputSource, Mode, ParamStatus, gate
from execorder.report.memory import Memory
from execorder.report.reading import Fields
from execorder.spelling import label

SCHEMA_VERSION = 1


def _owner(qualname: str) -> str:
    return qualname.rpartition(".")[0]


def shape_text(shape: tuple[int, ...]) -> str:
    """A shape as the reports write it everywhere: ``[6, 6]`` (``[]`` for a scalar)."""
    return "[" + ", ".join(str(d) for d in shape) + "]"


@dataclass(frozen=True, slots=True)
class ParamGroup:
    """Parameters used together inside one module call.

    Either a child module was called (``module`` is the child, ``params`` all
    of its parameters) or parameters were used directly in an op (``module``
    is the calling module, ``params`` those the op read).
    """

    module: str
    params: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"module": self.module, "params": list(self.params)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "group") -> ParamGroup:
        """Read one back from :meth:`to_dict` output; a wrong field is a ``SchemaError``."""
        fields = Fields(data, where)
        return cls(module=fields.get("module", str), params=tuple(fields.items("params", str)))


@dataclass(frozen=True, slots=True)
class ModuleCall:
    """One call of a module's forward, in execution order.

    Attributes:
        index: Position in the module forward order (the root is 0).
        name: First qualified name of the module (``""`` for the root).
        type: Class name of the module.
        depth: Nesting depth of the call (the root is 0).
        parent: Index of the enclosing call, None for the root.
        repeat: How many earlier calls this module had (0 on its first
            call). JSON calls it ``"call"``.
        aliases: Other qualified names of the same module object.
        uses: Parameter groups used during this call, in order.
    """

    index: int
    name: str
    type: str
    depth: int
    parent: int | None
    repeat: int
    aliases: tuple[str, ...]
    uses: tuple[ParamGroup, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "type": self.type,
            "depth": self.depth,
            "parent": self.parent,
            "call": self.repeat,
            "aliases": list(self.aliases),
            "uses": [group.to_dict() for group in self.uses],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "module") -> ModuleCall:
        """Read one back from :meth:`to_dict` output; a wrong field is a ``SchemaError``."""
        fields = Fields(data, where)
        return cls(
            index=fields.get("index", int),
            name=fields.get("name", str),
            type=fields.get("type", str),
            depth=fields.get("depth", int),
            parent=fields.get("parent", int, type(None)),
            repeat=fields.get("call", int),
            aliases=tuple(fields.items("aliases", str)),
            uses=tuple(ParamGroup.from_dict(g.data, g.where) for g in fields.objects("uses")),
        )


@dataclass(frozen=True, slots=True)
class ParamInfo:
    """A parameter, with where it was first used when it was used at all.

    Attributes:
        name: First qualified name from ``named_parameters()``.
        aliases: Its other qualified names (tied parameters).
        index: Its position in ``named_parameters()``, frozen parameters
            included.
        shape: Its shape.
        dtype: Its dtype without the ``torch.`` prefix.
        numel: Number of elements.
        requires_grad: False for a frozen parameter.
        first_module: Module whose call first used it (None when unused).
        first_call: Index of that call in the module order (None when unused).
        assumed: Used only inside leaf modules whose internals the backend
            cannot see, so its use is assumed rather than observed.
        dead: A trainable parameter used in forward, but no use reaches an
            output, so it gets no gradient.
        ddp_index: Its number in DDP's messages ("Parameter indices which did
            not receive grad"): its position among the parameters that
            require grad, in ``parameters()`` order, but those DDP ignores
            (:attr:`Report.ddp_ignored`); None for a frozen or ignored one
            (and for reports written before it existed).
        rests_on_assumption: Its status (used, unused or dead) rests on an
            assumption the meta run made about values it could not know
            (see :attr:`Report.assumptions`): a real run may differ.
    """

    name: str
    aliases: tuple[str, ...]
    index: int
    shape: tuple[int, ...]
    dtype: str
    numel: int
    requires_grad: bool = True
    first_module: str | None = None
    first_call: int | None = None
    assumed: bool = False
    dead: bool = False
    ddp_index: int | None = None
    rests_on_assumption: bool = False

    @property
    def owner(self) -> str:
        """Qualified name of the module that owns the parameter."""
        return _owner(self.name)

    @property
    def used(self) -> bool:
        """Whether forward read it (a dead parameter is used, too)."""
        return self.first_call is not None

    @property
    def status(self) -> ParamStatus:
        """Used (with a gradient), unused, or dead."""
        if not self.used:
            return ParamStatus.UNUSED
        return ParamStatus.DEAD if self.dead else ParamStatus.USED

    @property
    def gets_gradient(self) -> bool:
        """Whether a backward gives it a gradient: trainable, used and not dead."""
        return self.requires_grad and self.status is ParamStatus.USED

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "aliases": list(self.aliases),
            "index": self.index,
            "ddp_index": self.ddp_index,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "numel": self.numel,
            "owner": self.owner,
            "requires_grad": self.requires_grad,
            "rests_on_assumption": self.rests_on_assumption,
        }
        if self.used:
            data["first_module"] = self.first_module
            data["first_call"] = self.first_call
            data["assumed"] = self.assumed
            data["dead"] = self.dead
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "param") -> ParamInfo:
        """Read one back from :meth:`to_dict` output; a wrong field is a ``SchemaError``."""
        fields = Fields(data, where)
        nothing = type(None)
        return cls(
            name=fields.get("name", str),
            aliases=tuple(fields.items("aliases", str)),
            index=fields.get("index", int),
            shape=tuple(fields.items("shape", int)),
            dtype=fields.get("dtype", str),
            numel=fields.get("numel", int),
            requires_grad=fields.get("requires_grad", bool),
            first_module=fields.get("first_module", str, nothing, default=None),
            first_call=fields.get("first_call", int, nothing, default=None),
            assumed=fields.get("assumed", bool, default=False),
            dead=fields.get("dead", bool, default=False),
            ddp_index=fields.get("ddp_index", int, nothing, default=None),
            rests_on_assumption=fields.get("rests_on_assumption", bool, default=False),
        )


@dataclass(frozen=True, slots=True)
class ExternalUse:
    """A parameter used in an op while no module that owns it is running.

    FSDP gathers a wrapped module's parameters for that module's forward, so
    such a use (e.g. the root doing ``F.linear(y, self.lin.weight)`` without
    calling ``lin``) reads a parameter that may not be gathered.

    Attributes:
        param: The parameter's qualified name.
        owner: The module holding it.
        used_by: The module whose call used it.
        call: The index of that call in the module order.
    """

    param: str
    owner: str
    used_by: str
    call: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.param, "owner": self.owner, "used_by": self.used_by, "call": self.call}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "external") -> ExternalUse:
        """Read one back from :meth:`to_dict` output; a wrong field is a ``SchemaError``."""
        fields = Fields(data, where)
        return cls(
            param=fields.get("name", str),
            owner=fields.get("owner", str),
            used_by=fields.get("used_by", str),
            call=fields.get("call", int),
        )


@dataclass(frozen=True, slots=True)
class Assumption:
    """A value a run could not know, and what it assumed instead.

    On the meta device parameters have no values, so a selection made from
    values computed from them (which experts a router picks: ``nonzero``, a
    boolean mask as an index) cannot be known. The run assumes the selection
    keeps every element, as torch's own meta kernel for ``nonzero`` does, and
    says so here. Every parameter whose status may rest on it is marked
    (:attr:`ParamInfo.rests_on_assumption`): those of the module whose call
    made it, and any used later inside that call.

    In any run, a custom autograd Function's ``backward`` is not seen (only a
    real backward runs it): a parameter its ``forward`` reads without being
    passed it is taken as getting no gradient from it (``assumed`` is
    :attr:`AssumptionKind.BACKWARD`), as is usual, but a Function that computes
    gradients itself (reversible layers) gives it one. Such parameters, when
    no other use gives them a gradient, rest on it.

    Attributes:
        op: The op that selected (``aten.nonzero``), or the Function's
            backward (``_ReversibleFunction.backward``).
        module: The module whose call made it (``""`` for the root).
        call: The index of that call in the module order.
        where: ``file.py:line`` of the model's code that made it, if known.
        count: How many times that call made it there.
        assumed: What was assumed.
        own_generator: A choice from a draw (:attr:`AssumptionKind.DRAWN`) of a
            generator of the model's own (a ``random.Random`` it holds, a
            ``torch.Generator`` passed as ``generator=``), which the run's seed
            does not set: another seed draws the same. In the JSON only when
            true.
    """

    op: str
    module: str
    call: int
    where: str = ""
    count: int = 1
    assumed: AssumptionKind = AssumptionKind.SELECTION
    own_generator: bool = False

    ASSUMED = AssumptionKind.SELECTION.value

    def to_dict(self) -> dict[str, Any]:
        data = {
            "op": self.op,
            "module": self.module,
            "call": self.call,
            "where": self.where,
            "count": self.count,
            "assumed": self.assumed.value,
        }
        return data | {"own_generator": True} if self.own_generator else data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "assumption") -> Assumption:
        """Read one back from :meth:`to_dict` output; a wrong field is a ``SchemaError``."""
        fields = Fields(data, where)
        return cls(
            op=fields.get("op", str),
            module=fields.get("module", str),
            call=fields.get("call", int),
            where=fields.get("where", str, default=""),
            count=fields.get("count", int, default=1),
            assumed=fields.word("assumed", AssumptionKind, default=AssumptionKind.SELECTION),
            own_generator=fields.get("own_generator", bool, default=False),
        )


@dataclass(frozen=True, slots=True)
class DdpBuilt:
    """What the ``DistributedDataParallel`` that ran a recorded step registered when it wrapped
    the model, where that is not what it would register now: ``requires_grad`` was turned
    on or off since.

    DDP registers the parameters that require grad once, when it is built. One
    frozen since is still waited for: without ``find_unused_parameters`` or
    ``static_graph`` the next step fails ("Expected to have finished reduction in
    the prior iteration"). One made trainable since is never all-reduced: the
    ranks' copies drift apart, with no error. DDP keeps only how many it
    registered and their bytes, so which ones changed is not known.

    Attributes:
        params: The parameters it registered when built (its own count).
        bytes: Their bytes.
        params_now: The parameters it would register now.
        bytes_now: Their bytes.
    """

    params: int
    bytes: int
    params_now: int
    bytes_now: int

    @property
    def frozen_since(self) -> int:
        """How many parameters at least were frozen since (1 when only the bytes tell)."""
        if self.params == self.params_now:
            return int(self.bytes != self.bytes_now)
        return max(self.params - self.params_now, 0)

    @property
    def trainable_since(self) -> int:
        """How many parameters at least were made trainable since (1 when only the bytes tell)."""
        if self.params == self.params_now:
            return int(self.bytes != self.bytes_now)
        return max(self.params_now - self.params, 0)

    def to_dict(self) -> dict[str, int]:
        return {
            "params": self.params,
            "bytes": self.bytes,
            "params_now": self.params_now,
            "bytes_now": self.bytes_now,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DdpBuilt:
        fields = Fields(data, "ddp_built")
        counts = ("params", "bytes", "params_now", "bytes_now")
        return cls(*(fields.get(name, int) for name in counts))


@dataclass(frozen=True, slots=True)
class OutputReach:
    """Which of forward's outputs a loss must read for every trainable parameter to get a gradient.

    Liveness starts from every output, as a loss that reads them all would.
    When forward returns several values that carry a gradient, a loss on
    some of them (the logits, not an auxiliary head's; BERT's hidden states,
    not its pooler's output) can leave parameters without one: DDP then
    fails as it does on a dead parameter.

    Attributes:
        outputs: The outputs that carry a gradient to some trainable
            parameter, by path (``logits``, ``aux.0``, ``1``), in order.
        main: The one that reaches the most trainable parameters (the first
            of those that tie).
        misses: For each output a loss on which alone would leave some
            trainable parameters with a gradient without one, those
            parameters, in ``named_parameters()`` order; the outputs that
            miss none are left out.
    """

    outputs: tuple[str, ...]
    main: str
    misses: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def only_elsewhere(self) -> dict[str, tuple[str, ...]]:
        """The parameters :attr:`main` misses, each with the outputs that reach it."""
        return {
            name: tuple(o for o in self.outputs if name not in self.misses.get(o, ()))
            for name in self.misses.get(self.main, ())
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "outputs": list(self.outputs),
            "main": self.main,
            "misses": {output: list(names) for output, names in self.misses.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "output_reach") -> OutputReach:
        """Read one back from :meth:`to_dict` output; a wrong field is a ``SchemaError``."""
        fields = Fields(data, where)
        misses = fields.get("misses", dict)
        for output, names in misses.items():
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise SchemaError(f"{where}.misses.{output} must be a list of strings")
        return cls(
            outputs=tuple(fields.items("outputs", str)),
            main=fields.get("main", str),
            misses={str(output): tuple(names) for output, names in misses.items()},
        )


@dataclass(frozen=True, slots=True)
class CallTime:
    """The wall time of one module call, in microseconds.

    Attributes:
        start_us: When it started, from the start of the first call.
        total_us: How long it ran, calls inside it included.
        self_us: How long it ran outside the calls inside it.
    """

    start_us: float
    total_us: float
    self_us: float


@dataclass(frozen=True, slots=True)
class Timing:
    """Real times of a forward's module calls (``--timing``).

    Attributes:
        clock: ``"cpu"`` (``perf_counter``) or ``"cuda"`` (CUDA events).
        calls: Each module call's times, by its index in the module order.
    """

    clock: str
    calls: tuple[CallTime, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "clock": self.clock,
            "unit": "us",
            "calls": [
                {
                    "call": i,
                    "start_us": round(c.start_us, 3),
                    "total_us": round(c.total_us, 3),
                    "self_us": round(c.self_us, 3),
                }
                for i, c in enumerate(self.calls)
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Timing:
        """Read it back from :meth:`to_dict` output; a wrong field is a ``SchemaError``."""
        fields = Fields(data, "timing")
        calls = []
        for call in fields.objects("calls"):
            values = [call.get(k, int, float) for k in ("start_us", "total_us", "self_us")]
            calls.append(CallTime(*(float(v) for v in values)))
        return cls(clock=fields.get("clock", str), calls=tuple(calls))


@dataclass(frozen=True, slots=True)
class Summary:
    """Counts over the whole report."""

    calls: int
    modules: int
    params_total: int
    params_used: int
    numel_total: int
    numel_used: int
    params_dead: int = 0
    params_frozen: int = 0
    params_assumed: int = 0
    params_no_grad: int = 0
    external_uses: int = 0
    params_on_assumption: int = 0

    @property
    def params_unused(self) -> int:
        return self.params_total - self.params_used

    @property
    def numel_unused(self) -> int:
        return self.numel_total - self.numel_used

    @property
    def unused_fraction(self) -> float:
        """Share of parameter elements never used (0.0 for a model without any)."""
        return self.numel_unused / self.numel_total if self.numel_total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "modules": self.modules,
            "params_total": self.params_total,
            "params_used": self.params_used,
            "params_unused": self.params_unused,
            "params_dead": self.params_dead,
            "params_frozen": self.params_frozen,
            "params_assumed": self.params_assumed,
            "params_no_grad": self.params_no_grad,
            "external_uses": self.external_uses,
            "params_on_assumption": self.params_on_assumption,
            "numel_total": self.numel_total,
            "numel_used": self.numel_used,
            "numel_unused": self.numel_unused,
            "unused_fraction": self.unused_fraction,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "summary") -> Summary:
        """Read one back from :meth:`to_dict` output; a wrong field is a ``SchemaError``."""
        fields = Fields(data, where)
        names = (
            "calls", "modules", "params_total", "params_used", "numel_total", "numel_used",
            "params_dead", "params_frozen", "params_assumed", "params_no_grad", "external_uses",
        )  # fmt: skip
        counts = {name: fields.get(name, int) for name in names}
        # Added later: absent in older reports, where no run assumed anything.
        counts["params_on_assumption"] = fields.get("params_on_assumption", int, default=0)
        return cls(**counts)


def jsonable(value: Any) -> Any:
    """A JSON-safe copy of a concrete argument value (``repr`` for anything exotic)."""
    try:
        return _jsonable(value)
    except RecursionError:
        return "<a value nested too deeply to show>"


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


@dataclass(frozen=True, slots=True)
class Report:
    """Everything one trace of a model's forward found.

    Attributes:
        target: What was traced (the CLI's TARGET, or the model's class name).
        mode: The backend that recorded it (``Mode.FX`` or ``Mode.EAGER``).
        concrete_args: The concrete arguments, JSON-safe.
        modules: Every module call in forward order, the root first.
        params: Used parameters in first-use order (dead ones included).
        unused: Parameters never used, in ``named_parameters()`` order.
        summary: Counts.
        external: Uses of parameters while none of their owners was running.
        backward: Parameters in the order their gradients were accumulated
            (eager mode with a backward run), else None.
        inputs: The input tensors of an eager run, as ``dtype[shape]`` by name.
        seed: The seed the model's build, generated inputs and run used, or None
            when nothing was seeded (a recorded step of the user's own).
        defaults: forward's arguments an eager run left to their default
            values, with those values (JSON-safe): they may have chosen a
            branch. Empty for FX, whose unpinned arguments stay symbolic.
        assumptions: What a run on the meta device assumed about values it
            could not know, in the order it assumed them; empty when the
            report rests on nothing assumed.
        timing: Real times of the module calls, when forward was timed
            (``--timing``); None otherwise (and absent from the JSON).
        memory: What a training step holds, when, and at its peak
            (``memory=`` / ``--memory``); None when not measured (and absent
            from the JSON).
        output_reach: Which outputs a loss must read for every trainable
            parameter to get a gradient, when forward returns several that
            carry one and liveness comes from all of them (no backward of
            the caller's own ran in the recording); None otherwise (and
            absent from the JSON).
        split_gradients: Trainable parameters whose gradient arrives in more
            than one backward pass, by name, with the number of passes: a
            reentrant checkpoint's block (``use_reentrant=True``) runs a
            backward of its own, so a parameter used inside one and elsewhere
            (another such block, or outside) gets its gradient in parts.
            DDP marks a parameter ready once a step: without
            ``static_graph=True`` it fails, or all-reduces before the last
            part arrives. Empty (and absent from the JSON) when there is none
            or the backend did not count them.
        split_by_backwards: Those of :attr:`split_gradients` whose parts come
            from several backward calls of the caller's own over the one
            forward (``loss_a.backward(retain_graph=True)``, then
            ``loss_b.backward()``), not from reentrant checkpoints' passes
            inside one. DDP reduces a parameter once a forward under every
            setting, ``static_graph=True`` too: it raises, or the ranks drift
            apart. In ``parameters()`` order; empty (and absent from the JSON)
            when there is none.
        recomputed_calls: The module calls made inside a reentrant checkpoint's
            block (indices into ``modules``), which backward makes again, in
            the backward pass of that block's own. Empty (and absent from the
            JSON) when there are none.
        input_writes: The module calls (indices into ``modules``) that wrote
            into a list, dict or dataclass they were passed holding a tensor
            that needs grad (a cache of activations): FSDP2 passes a unit a
            copy of such an argument, so a unit's write is lost to its caller
            (in FX, a value that depends on a trainable parameter). Empty, and
            absent from the JSON, when none did.
        recompute_only: Trainable parameters whose gradient comes only from
            reentrant checkpoints' recomputes, in their own backward passes:
            forward ran their blocks without grad, so they are not in the
            graph forward leaves. ``DistributedDataParallel`` with
            ``find_unused_parameters=True`` searches that graph when forward
            ends, takes them for unused and marks them ready; their gradient
            then raises "Expected to mark a variable ready only once". In
            ``parameters()`` order; empty (and absent from the JSON) when
            there is none or the backend did not tell.
        never_recomputed: Trainable parameters that get no gradient because
            forward read them only inside reentrant checkpoints' blocks none of
            whose inputs needed grad: torch never recomputes such a block in
            backward (PyTorch's well-known pitfall: a frozen embedding, or
            LoRA on a frozen model, before checkpointed blocks). In
            ``parameters()`` order; empty (and absent from the JSON) when
            there is none or the backend did not tell.
        own_checkpoints: The model's own checkpoint Functions (Megatron-LM's,
            DeepSpeed's: their ``ctx`` keeps the ``run_function`` their
            backward runs again) that ran such a block, by class name; empty
            (and absent from the JSON) when only torch's ran one, or none did.
            ``use_reentrant=False`` is no option of theirs.
        inputs_made: The inputs execorder made itself, and where from: a
            transformers model's own example inputs (``dummy_inputs``) when
            it was given none, torchtitan's positions and attention masks as
            its trainer makes them. Empty (and absent from the JSON) when
            the caller gave every input.
        ddp_ignored: Trainable parameters ``DistributedDataParallel`` leaves
            out, by name, in ``parameters()`` order: those the model names in
            ``_ddp_params_and_buffers_to_ignore``
            (``DistributedDataParallel._set_params_and_buffers_to_ignore_for_model``),
            matched as DDP matches them; in a recorded step, also a DDP's
            ``delay_all_reduce_named_params`` (all-reduced apart, after
            backward). DDP neither numbers nor waits for them, so they have no
            :attr:`ParamInfo.ddp_index` and are not in :meth:`no_grad`. Empty
            (and absent from the JSON) when there is none.
        ddp_built: Under a ``DistributedDataParallel`` built when other
            parameters required grad (``requires_grad_`` after wrapping): what
            it registered then, and would now. None otherwise (and absent from
            the JSON).
        ddp_unreduced: Under the first step of a ``DistributedDataParallel``
            with ``static_graph=True``, which all-reduces when the first
            backward through forward's outputs ends: the parameters it
            registers whose gradient arrives only in a later backward of the
            caller's own (after a gradient penalty's ``autograd.grad``). They
            are never all-reduced, and the ranks drift apart. In
            ``parameters()`` order; empty (and absent from the JSON) otherwise.
        ddp_waiting: The ``DistributedDataParallel`` instances of a recorded step
            that, once its backward had run, had not finished reducing its
            gradients on this rank, by DDP's own check (the one its next
            forward raises on, "Expected to have finished reduction in the
            prior iteration"): ``""`` for the one that ran the model, a
            module's qualified name for one inside it. Each waits for a
            gradient that did not come, and fails at the next step; its
            all-reduces stopped part-way on this rank. Empty (and absent from
            the JSON) otherwise.
    """

    target: str
    mode: Mode
    concrete_args: Mapping[str, Any]
    modules: tuple[ModuleCall, ...]
    params: tuple[ParamInfo, ...]
    unused: tuple[ParamInfo, ...]
    summary: Summary
    external: tuple[ExternalUse, ...] = ()
    backward: tuple[str, ...] | None = None
    inputs: Mapping[str, str] = field(default_factory=dict)
    seed: int | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    assumptions: tuple[Assumption, ...] = ()
    timing: Timing | None = None
    inputs_made: Mapping[str, InputSource] = field(default_factory=dict)
    memory: Memory | None = None
    output_reach: OutputReach | None = None
    split_gradients: Mapping[str, int] = field(default_factory=dict)
    split_by_backwards: tuple[str, ...] = ()
    recomputed_calls: tuple[int, ...] = ()
    input_writes: tuple[int, ...] = ()
    own_checkpoints: tuple[str, ...] = ()
    recompute_only: tuple[str, ...] = ()
    never_recomputed: tuple[str, ...] = ()
    ddp_ignored: tuple[str, ...] = ()
    ddp_built: DdpBuilt | None = None
    ddp_unreduced: tuple[str, ...] = ()
    ddp_waiting: tuple[str, ...] = ()
    schema_version: int = SCHEMA_VERSION

    @property
    def dead(self) -> tuple[ParamInfo, ...]:
        """Parameters used in forward whose uses never reach an output."""
        return tuple(p for p in self.params if p.dead)

    @property
    def on_assumption(self) -> tuple[ParamInfo, ...]:
        """Parameters whose status rests on an assumption, in ``named_parameters()`` order."""
        return tuple(p for p in self.all_params() if p.rests_on_assumption)

    def assumed(self, kind: AssumptionKind | str) -> tuple[Assumption, ...]:
        """The assumptions of one kind: a meta run's selections, the custom Functions'
        backwards no walk sees, or eager's graph for compiled code."""
        chosen = AssumptionKind(kind)
        return tuple(a for a in self.assumptions if a.assumed is chosen)

    def held_by_compiled_code(self) -> tuple[ParamInfo, ...]:
        """Trainable parameters dead in eager's graph of compiled code, which ran eagerly to be
        recorded: the compiled graph may hold each as an input, which DDP counts ready."""
        if not self.assumed(AssumptionKind.COMPILED):
            return ()
        return tuple(p for p in self.dead if p.requires_grad and p.rests_on_assumption)

    @property
    def frozen(self) -> tuple[ParamInfo, ...]:
        """Parameters with ``requires_grad=False``, in ``named_parameters()`` order."""
        return tuple(p for p in self.all_params() if not p.requires_grad)

    @property
    def no_use_seen(self) -> bool:
        """Whether forward ran for real, the model has parameters, and no use of any was seen.

        Either forward reads none of them, or it reads them through something
        that hides them from the recording (parameters swapped for copies,
        as ``torch.func.functional_call`` or ``DataParallel``'s replicas do):
        the report cannot tell which, so "every parameter unused" is not a
        finding to trust. Never true of an FX trace, whose graph holds every
        read of a parameter.
        """
        summary = self.summary
        return self.mode is Mode.EAGER and summary.params_total > 0 and summary.params_used == 0

    def all_params(self) -> tuple[ParamInfo, ...]:
        """Every parameter, in ``named_parameters()`` order."""
        return tuple(sorted((*self.params, *self.unused), key=lambda p: p.index))

    def no_grad(self) -> tuple[ParamInfo, ...]:
        """Trainable parameters that get no gradient (unused or dead), but those DDP ignores.

        These are the parameters DDP (``find_unused_parameters=False``) fails
        on, in ``named_parameters()`` order.
        """
        ignored = set(self.ddp_ignored)
        return tuple(
            p
            for p in self.all_params()
            if p.requires_grad and not p.gets_gradient and p.name not in ignored
        )

    def findings(self, category: Category | str) -> tuple[str, ...]:
        """Names of what a CI gate category found.

        Args:
            category: ``UNUSED``, ``DEAD`` or ``ASSUMPTION`` (trainable
                parameters only: frozen ones cannot break DDP), ``OUTPUTS``
                (those that get a gradient only through outputs other than
                :attr:`OutputReach.main`), ``REENTRANT`` (those whose gradient
                arrives in several backward passes: :attr:`split_gradients`),
                ``RECOMPUTE_ONLY`` (those only a recompute gives a gradient:
                :attr:`recompute_only`), or ``EXTERNAL`` (uses).

        Raises:
            ValueError: For another category (``BRANCH`` is a sweep's).
        """
        kind = Category(category)
        if kind is Category.UNUSED:
            return tuple(p.name for p in self.unused if p.requires_grad)
        if kind is Category.DEAD:
            return tuple(p.name for p in self.dead if p.requires_grad)
        if kind is Category.ASSUMPTION:
            return tuple(p.name for p in self.on_assumption if p.requires_grad)
        if kind is Category.EXTERNAL:
            return tuple(f"{u.param} used by {label(u.used_by)}" for u in self.external)
        if kind is Category.OUTPUTS:
            reach = self.output_reach
            return () if reach is None else tuple(reach.misses.get(reach.main, ()))
        if kind is Category.REENTRANT:
            return tuple(self.split_gradients)
        if kind is Category.RECOMPUTE_ONLY:
            return self.recompute_only
        raise ValueError(f"{kind} is a finding of a sweep, not of one report")

    def failing(self, categories: Iterable[Category | str]) -> Mapping[Category, tuple[str, ...]]:
        """What a CI gate on ``categories`` fails on: each category with findings, and them.

        The gate ``execorder trace --fail-on`` applies. Gating on unused or
        dead gates on assumption too (see :func:`gate_categories`); empty
        when the gate passes.

        Raises:
            ValueError: For a category that is not one of a report (``BRANCH``).
        """
        return gate(self.findings, categories)

    def as_ddp_sees_it(self) -> Report:
        """This report as ``DistributedDataParallel`` sees the model: the parameters it ignores
        (:attr:`ddp_ignored`) taken as frozen, since it neither numbers nor waits for them.
        The report itself when it ignores none."""
        if not self.ddp_ignored:
            return self
        ignored = set(self.ddp_ignored)

        def seen(params: tuple[ParamInfo, ...]) -> tuple[ParamInfo, ...]:
            return tuple(
                replace(p, requires_grad=False) if p.name in ignored else p for p in params
            )

        params, unused = seen(self.params), seen(self.unused)
        summary = replace(
            self.summary,
            params_frozen=sum(not p.requires_grad for p in (*params, *unused)),
            params_no_grad=len(self.no_grad()),
        )
        reach = self.output_reach
        if reach is not None:
            misses = {o: tuple(n for n in ns if n not in ignored) for o, ns in reach.misses.items()}
            reach = replace(reach, misses={o: ns for o, ns in misses.items() if ns})
        return replace(
            self,
            params=params,
            unused=unused,
            summary=summary,
            output_reach=reach,
            split_gradients={n: k for n, k in self.split_gradients.items() if n not in ignored},
            split_by_backwards=tuple(n for n in self.split_by_backwards if n not in ignored),
            ddp_unreduced=tuple(n for n in self.ddp_unreduced if n not in ignored),
            recompute_only=tuple(n for n in self.recompute_only if n not in ignored),
            never_recomputed=tuple(n for n in self.never_recomputed if n not in ignored),
        )

    def ddp_order(self) -> tuple[ParamInfo, ...]:
        """Parameters in the order DDP numbers them in its error message.

        DDP registers the parameters that require grad, in ``parameters()``
        order, but those it ignores (:attr:`ddp_ignored`); index ``i`` of its
        message is element ``i`` of this tuple.
        """
        ignored = set(self.ddp_ignored)
        registered = [p for p in self.all_params() if p.requires_grad and p.name not in ignored]
        # In DDP's own order: a tied parameter ignored under its first name is registered
        # under a later one (reports older than ddp_index: parameters() order).
        return tuple(sorted(registered, key=lambda p: (p.ddp_index is None, p.ddp_index or 0)))

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", Mode(self.mode))
        frozen_args = MappingProxyType({k: jsonable(v) for k, v in self.concrete_args.items()})
        object.__setattr__(self, "concrete_args", frozen_args)
        object.__setattr__(self, "inputs", MappingProxyType(dict(self.inputs)))
        made = {k: InputSource(v) for k, v in self.inputs_made.items()}
        object.__setattr__(self, "inputs_made", MappingProxyType(made))
        frozen_defaults = MappingProxyType({k: jsonable(v) for k, v in self.defaults.items()})
        object.__setattr__(self, "defaults", frozen_defaults)
        object.__setattr__(self, "split_gradients", MappingProxyType(dict(self.split_gradients)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "report",
            "schema_version": self.schema_version,
            "target": self.target,
            "mode": self.mode.value,
            "concrete_args": dict(self.concrete_args),
            "defaults": dict(self.defaults),
            "inputs": dict(self.inputs),
            "modules": [call.to_dict() for call in self.modules],
            "params": [param.to_dict() for param in self.params],
            "unused": [param.to_dict() for param in self.unused],
            "dead": [param.to_dict() for param in self.dead],
            "external": [use.to_dict() for use in self.external],
            "backward": None if self.backward is None else list(self.backward),
            "seed": self.seed,
            "assumptions": [assumption.to_dict() for assumption in self.assumptions],
            "summary": self.summary.to_dict(),
            **({"timing": self.timing.to_dict()} if self.timing is not None else {}),
            **(
                {"inputs_made": {k: v.value for k, v in self.inputs_made.items()}}
                if self.inputs_made
                else {}
            ),
            **({"memory": self.memory.to_dict()} if self.memory is not None else {}),
            **(
                {"output_reach": self.output_reach.to_dict()}
                if self.output_reach is not None
                else {}
            ),
            **({"split_gradients": dict(self.split_gradients)} if self.split_gradients else {}),
            **(
                {"split_by_backwards": list(self.split_by_backwards)}
                if self.split_by_backwards
                else {}
            ),
            **({"recomputed_calls": list(self.recomputed_calls)} if self.recomputed_calls else {}),
            **({"input_writes": list(self.input_writes)} if self.input_writes else {}),
            **({"own_checkpoints": list(self.own_checkpoints)} if self.own_checkpoints else {}),
            **({"recompute_only": list(self.recompute_only)} if self.recompute_only else {}),
            **({"never_recomputed": list(self.never_recomputed)} if self.never_recomputed else {}),
            **({"ddp_ignored": list(self.ddp_ignored)} if self.ddp_ignored else {}),
            **({"ddp_built": self.ddp_built.to_dict()} if self.ddp_built is not None else {}),
            **({"ddp_unreduced": list(self.ddp_unreduced)} if self.ddp_unreduced else {}),
            **({"ddp_waiting": list(self.ddp_waiting)} if self.ddp_waiting else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Report:
        """Rebuild a report from :meth:`to_dict` output (e.g. loaded JSON).

        Raises:
            SchemaError: If the schema version differs, or a field is missing or
                of the wrong type (named by its path: ``modules[3].index``).
        """
        version = data.get("schema_version") if isinstance(data, Mapping) else None
        if version != SCHEMA_VERSION:
            raise SchemaError(
                f"report has schema_version {version!r}; this execorder reads {SCHEMA_VERSION}"
            )
        fields = Fields(data, "")
        mode = fields.get("mode", str)
        if mode not in (Mode.FX, Mode.EAGER):
            raise SchemaError(f"mode must be 'fx' or 'eager', not {mode!r}")
        inputs = fields.get("inputs", dict, default={})
        for name, described in inputs.items():
            if not isinstance(described, str):
                raise SchemaError(f"inputs.{name} must be a string, not {type(described).__name__}")
        backward = fields.get("backward", list, type(None), default=None)
        return cls(
            target=fields.get("target", str),
            mode=Mode(mode),
            concrete_args=fields.get("concrete_args", dict),
            modules=tuple(ModuleCall.from_dict(c.data, c.where) for c in fields.objects("modules")),
            params=tuple(ParamInfo.from_dict(p.data, p.where) for p in fields.objects("params")),
            unused=tuple(ParamInfo.from_dict(p.data, p.where) for p in fields.objects("unused")),
            summary=Summary.from_dict(fields.get("summary", dict)),
            external=tuple(
                ExternalUse.from_dict(u.data, u.where) for u in fields.objects("external")
            ),
            # Optional, additive fields: absent means "not recorded".
            backward=None if backward is None else tuple(fields.items("backward", str)),
            inputs=inputs,
            seed=fields.get("seed", int, type(None), default=None),
            defaults=fields.get("defaults", dict, default={}),
            assumptions=tuple(
                Assumption.from_dict(a.data, a.where)
                for a in fields.objects("assumptions", default=())
            ),
            timing=None
            if fields.get("timing", dict, type(None), default=None) is None
            else Timing.from_dict(data["timing"]),
            inputs_made=read_inputs_made(fields.get("inputs_made", dict, default={})),
            memory=None
            if fields.get("memory", dict, type(None), default=None) is None
            else Memory.from_dict(data["memory"]),
            output_reach=None
            if fields.get("output_reach", dict, type(None), default=None) is None
            else OutputReach.from_dict(data["output_reach"]),
            split_gradients=_counts(
                Fields(fields.get("split_gradients", dict, default={}), "split_gradients")
            ),
            split_by_backwards=tuple(fields.items("split_by_backwards", str, default=())),
            recomputed_calls=tuple(fields.items("recomputed_calls", int, default=())),
            input_writes=tuple(fields.items("input_writes", int, default=())),
            own_checkpoints=tuple(fields.items("own_checkpoints", str, default=())),
            recompute_only=tuple(fields.items("recompute_only", str, default=())),
            never_recomputed=tuple(fields.items("never_recomputed", str, default=())),
            ddp_ignored=tuple(fields.items("ddp_ignored", str, default=())),
            ddp_built=None
            if fields.get("ddp_built", dict, type(None), default=None) is None
            else DdpBuilt.from_dict(data["ddp_built"]),
            ddp_unreduced=tuple(fields.items("ddp_unreduced", str, default=())),
            ddp_waiting=tuple(fields.items("ddp_waiting", str, default=())),
        )

    def param(self, name: str) -> ParamInfo:
        """Look a parameter up by any of its qualified names.

        Raises:
            KeyError: If no parameter has that name.
        """
        for info in (*self.params, *self.unused):
            if info.name == name or name in info.aliases:
                return info
        raise KeyError(name)


def _counts(counts: Fields) -> dict[str, int]:
    """An object of integers by name (``split_gradients``), read with each checked."""
    return {str(name): counts.get(name, int) for name in counts.data}


def read_inputs_made(data: Mapping[str, Any]) -> dict[str, InputSource]:
    """The JSON's ``inputs_made``, read; a source not known is a ``SchemaError``."""
    try:
        return {str(name): InputSource(source) for name, source in data.items()}
    except ValueError as exc:
        raise SchemaError(f"inputs_made: {exc}") from None
