"""The eager backend: run forward for real and record what runs.

The work is in four modules, one concept each:
:mod:`~execorder.backends.eager_intercept` wraps every module call and
re-classes the parameters for the run, so ops on them are logged (ops on
activations cost nothing extra), and puts everything back afterwards, also
when forward raises; :mod:`~execorder.backends.eager_liveness` settles which
parameters get a gradient, from the backward that ran inside the block, else
from the outputs' autograd graph; :mod:`~execorder.backends.eager_wrapped`
says which wrapped models can be recorded (DDP, ``torch.compile``, FSDP2);
:mod:`~execorder.backends.eager_failures` turns a failed forward into its
error. The hot path only appends to a list, which the
:class:`~execorder.recording.Recorder` replays afterwards: both backends feed
it, so an eager report has the same shape as an FX one (``mode`` is
``"eager"``).

:func:`record` arms all this around a block of the user's own (a training
step), and :meth:`Recording.report` builds the report afterwards;
:func:`trace` runs a forward (and a backward of the summed outputs) inside it."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from typing import Any

import torch
from torch import nn
from torch.autograd import Variable

from execorder.backends.common import (
    DEEP,
    check_call,
    defaults_used,
    gc_paused,
    owner,
    tensors,
)
from execorder.backends.draws import (
    COMPUTED,
    LOGGED,
    MOVED,
    generators_of,
    packages_of,
    watching_draws,
)
from execorder.backends.eager_failures import (
    any_on_meta,
    describe_inputs,
    forward_failure,
    is_input,
)
from execorder.backends.eager_intercept import (
    ABSENT,
    Swaps,
    call_slot,
    frames_for,
    intercepting,
    restore,
)
from execorder.backends.eager_liveness import (
    Edge,
    GradHooks,
    live_params,
    nodes_named,
    output_edges,
    output_reach,
    own_reads,
    sink_passes,
    sum_backward,
)
from execorder.backends.eager_wrapped import (
    DdpInside,
    DdpSettings,
    check_recordable,
    compiled,
    compiled_around,
    ddp_around,
    ddps_inside,
    fsdp_managed,
    fsdp_units,
    readied,
    reduction_finished,
    replicate_ready,
    uncompiled,
)
from execorder.backends.meta import MetaRun, WithoutValues, on_meta_without_values
from execorder.backends.stand_ins import meta_stand_ins
from execorder.backends.timing import Clock
from execorder.errors import (
    ForwardError,
    MetaDeviceError,
    RecordingError,
    TooDeepError,
    UserExitError,
    first_line,
    user_code,
    user_frame,
    user_site,
)
from execorder.recording import (
    Assumed,
    Checkpointed,
    Event,
    ModuleTree,
    Recorder,
    build_report,
    class_name,
    module_tree,
    unique_params,
    unwrap,
)
from execorder.report import AssumptionKind, DdpBuilt, Mode, Report

__all__ = ["DdpSettings", "MetaDeviceError", "Recording", "live_params", "record", "trace"]


class Recording:
    """One forward of a model, and the backward that followed, as :func:`record` saw them.

    Cheap to hold: live module and parameter objects and a flat event log,
    named and frozen into a report only by :meth:`report`.
    """

    def __init__(
        self,
        model: nn.Module,
        tree: ModuleTree,
        *,
        assume: bool = True,
        timing: bool = False,
        values: bool = True,
    ) -> None:
        self.model = model
        self._tree = tree
        self._assume = assume
        self._values = values  # on meta: keep the values inputs decide (a MetaRun)
        self._without_values: WithoutValues | None = None  # the run without them, if so
        self._clock = _clock_for(model, tree) if timing else None
        self._running = False
        self._meta_run: MetaRun | None = None
        self._forward_assumed = False  # an assumption made while forward ran
        self._backward_assumed = False  # ... and one made after it (by backward)
        self._events: list[Event] = []
        self._order: list[nn.Parameter] = []  # gradient accumulations, by hook
        # The pass (graph task) of each; the caller's own backward running then (a
        # recompute's pass runs inside one); whether the first of those had ended.
        self._tasks: list[tuple[int, Any, bool]] = []
        self._calls = 0
        self._several = False  # a call after the first runs as it is (record(several=True))
        self._failed = False
        self._ended = False
        self._with_grad = True
        self._edges: list[Edge] = []  # forward's outputs, kept without their data
        self._returned: list[nn.Parameter] = []
        self._live: set[nn.Parameter] | None = None
        self._reach: list[tuple[str, set[nn.Parameter]]] | None = None
        self._passes: dict[nn.Parameter, set[Any]] = {}  # each live parameter's backward passes
        self._main_passes: set[Any] = set()  # the caller's own backwards among them
        self._main_now: Any = None  # the caller's backward through the outputs running now
        self._first_ended = False  # the first such backward has ended
        self._backwards: dict[nn.Parameter, set[Any]] = {}  # the caller's backwards of each
        self._late: set[nn.Parameter] = set()  # accumulated after the first such ended
        self._pass_hooks: list[Any] = []
        self._inputs: dict[str, str] = {}
        self._trainable: list[nn.Parameter] = []
        self._concrete_args: dict[str, Any] = {}
        self._defaults: dict[str, Any] = {}
        self._hooks = GradHooks()
        self._swaps = Swaps(self._hooks, self._accumulated)
        self._method: str | None = None
        self.ddp: DdpSettings | None = None
        """DDP's settings, when the recorded call ran inside a ``DistributedDataParallel``."""
        self.ddp_syncs: bool | None = None
        """Whether that DDP's backward reduces gradients: False under its ``no_sync()``
        (a micro-batch of gradient accumulation, reduced with a later one's); None without
        a DDP."""
        self.ddp_static_first = False
        """Whether the step was the first of a DDP with ``static_graph=True``, which fixes
        its graph for every step after: a parameter that gets no gradient in it is not
        reduced when it gets one later (or, reached by an output the loss does not read,
        is waited for)."""
        self.fsdp = False
        """Whether FSDP2 (``fully_shard``, or its ``replicate``) runs modules of the model."""
        self.ddps_inside: list[DdpInside] = []
        """The DDPs that ran modules inside the model (``DDP(model.encoder)`` put in its
        place, ``replicate(model.encoder)``), with their settings and what they register."""
        self._compiled = False  # forward ran compiled code (eagerly, to be recorded)
        self._ddp_registered: list[nn.Parameter] | None = None  # what DDP numbers, if not all
        self._ddp_built: DdpBuilt | None = None  # what DDP registered when built, if not that
        self._readied: set[nn.Parameter] = set()  # made ready for DDP only (see readied)
        self._zeros_only: set[nn.Parameter] = set()  # wrappers' empty gradients only reached
        self._sinks = False  # the DDP around passes the outputs through its _DDPSink
        self._ddp_group: Any = None  # ... and averages this step's gradients over this group
        self._ddp_wrapper: Any = None  # ... and is this DDP
        self._ddp_waiting: tuple[str, ...] = ()  # DDPs not done reducing once backward ran
        self._fsdp_managed: set[int] = set()  # ids of what FSDP2 shards
        self._fsdp_reduced: set[int] = set()  # ... and of what it reduced a gradient of
        self._arrived: dict[int, list[bool]] = {}  # a watched node -> which grads came to it
        self._fillers: list[Any] = []  # FSDP2's nodes on units' inputs (_watch_units)
        self._sink_nodes: list[Any] = []  # DDP's _DDPSink nodes in the graph (_watch_sinks)

    @property
    def calls(self) -> int:
        """How many times the model was called inside the block: more than one only under
        ``record(several=True)``, whose report is then refused."""
        return self._calls

    @property
    def refused_on_meta(self) -> bool:
        """Whether a run without values had an op on meta raise (caught by the model or not)."""
        plain = self._without_values
        return plain is not None and plain.refused is not None

    def _call(self, call: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The model's own call, with its modules and parameters recorded."""
        if self._calls:
            if not self._several:
                raise RecordingError(
                    f"{class_name(self.model)} was called a second time inside a record() "
                    "block; a recording covers one forward (and its backward)"
                )
            self._calls += 1  # run as it is: the block's report is refused (see calls)
            return call(*args, **kwargs)
        self._calls += 1
        self._with_grad = torch.is_grad_enabled()
        self._inputs = describe_inputs(args, kwargs)
        self._concrete_args = {k: v for k, v in kwargs.items() if not is_input(v)}
        self._defaults = defaults_used(
            self.model, args, kwargs, function=call if self._method else None
        )
        replicate_ready(self._tree)
        if self._meta_run is not None:
            if any(t.is_meta for t in tensors((args, kwargs))):
                self._meta_run.source = "parameters and meta inputs"
            # On meta like the model, and their values known: see MetaRun.adopt.
            args, kwargs = self._meta_run.adopt((args, kwargs))
        elif self._without_values is not None:
            args, kwargs = on_meta_without_values((args, kwargs))
        try:
            self._running = True
            clock = self._clock
            # A run on a real device notes the choices made from parameters' values (a
            # router's), a trace's and a job's step alike: on meta they are assumed (MetaRun).
            # FSDP2's units read the unsharded parameters it puts in their place as they run.
            on_meta, managed = any_on_meta(self._tree), self._fsdp_managed
            computed = [] if on_meta else [p for p in self._tree.params if id(p) not in managed]
            tree = self._tree
            named = [(tree.module_names[id(m)][0], m) for m in tree.modules]
            with (
                intercepting(self.model, tree, self._events, clock, self._swaps),
                watching_draws(
                    self._drew, computed, generators_of(named), packages_of(named)
                ) as follow,
            ):
                if not on_meta:
                    self._swaps.on_add = lambda param: follow([param])
                if clock is None:
                    outputs = call(*args, **kwargs)
                else:
                    clock.enter()
                    try:
                        outputs = call(*args, **kwargs)
                    finally:
                        clock.exit()
        except BaseException:
            self._failed = True
            raise
        finally:
            self._running = False
        # Read once the call has run: replicate() makes its DDP in the model's first call.
        around = ddp_around(self.model, {id(p) for p in self._trainable})
        self.ddp = None if around is None else around.settings
        self._sinks = around is not None and around.sinks
        self._ddp_registered = None if around is None else around.registered
        self._ddp_built = None if around is None else around.built
        self._ddp_group = None if around is None else around.reduces
        self._ddp_wrapper = None if around is None else around.wrapper
        self.ddp_syncs = None if around is None else around.syncs
        self.ddp_static_first = self._sinks and around is not None and around.settings.static_graph
        self.ddps_inside = ddps_inside(self.model, self._tree, {id(p) for p in self._trainable})
        self._edges = output_edges(outputs, self._own())
        self._main_pass_watched(outputs)
        if self._with_grad and self.fsdp:
            self._watch_units(outputs)
        if self._with_grad and (self._sinks or any(d.sinks for d in self.ddps_inside)):
            self._watch_sinks(outputs)
        self._compiled = self._compiled or compiled_around()
        ddp = self.ddp
        waits = ddp is not None and not ddp.find_unused_parameters and self._with_grad
        if waits and self._compiled:
            return self._ready_for_ddp(outputs)
        return outputs

    def _own(self) -> dict[int, nn.Parameter]:
        """The model's parameters by id, and those swapped in for them while forward ran."""
        return {id(p): p for p in self._tree.params} | self._swaps.canonical

    def _ready_for_ddp(self, outputs: Any) -> Any:
        """The outputs, made to ready for DDP, in backward, each trainable parameter forward read
        that this eager run's graph does not reach, as the compiled graph holding it would
        (:func:`readied`); the recording goes on from the outputs as forward returned them."""
        own = self._own()
        reads, in_blocks = _reads(self._events)
        reached = live_params(outputs, self._tree.params, self._swaps.canonical, into_blocks=False)
        # A reentrant checkpoint's block reaches its parameters in a backward pass of its own.
        reached |= {own.get(id(p), p) for p in in_blocks}
        reached |= {own[id(t)] for t in tensors(outputs) if id(t) in own}
        # What forward never read, compiled code does not hold either.
        read = {id(own.get(id(p), p)) for p in reads}
        with own_reads():
            waiting = [
                p for p in self._trainable if p not in reached and id(p) in read and p.requires_grad
            ]
        if not waiting:
            return outputs
        wrapped, done = readied(outputs, waiting)
        if done:
            self._readied = set(waiting)
        return wrapped

    def _main_pass_watched(self, outputs: Any) -> None:
        """Note each backward pass (graph task) that reaches forward's outputs: the caller's
        own backwards, beside which reentrant checkpoints' recomputes run passes of their own."""

        def seen(node: Any) -> Callable[[tuple[Any, ...]], None]:
            arrived = self._arrival(node)

            def pass_seen(grads: tuple[Any, ...]) -> None:
                task = _graph_task()
                if task != self._main_now:  # the pass's first output: note it until it ends
                    self._main_now = task
                    Variable._execution_engine.queue_callback(self._main_ended)
                self._main_passes.add(task)
                arrived(grads)

            return pass_seen

        nodes = {id(t.grad_fn): t.grad_fn for t in tensors(outputs) if t.grad_fn is not None}
        self._pass_hooks += [node.register_prehook(seen(node)) for node in nodes.values()]

    def _main_ended(self) -> None:
        """The caller's backward running now has ended (a callback at its end)."""
        self._main_now = None
        self._first_ended = True

    def _arrival(self, node: Any) -> Callable[[tuple[Any, ...]], None]:
        """A pre-hook of ``node`` that notes which of its outputs a gradient came to."""

        def arrived(grads: tuple[Any, ...]) -> None:
            came = self._arrived.setdefault(id(node), [False] * len(grads))
            for k, grad in enumerate(grads[: len(came)]):
                came[k] = came[k] or grad is not None

        return arrived

    def _watch_units(self, outputs: Any) -> None:
        """FSDP2 passes each unit's inputs through an autograd Function
        (``RegisterPostBackwardFunction``) whose backward fills zeros for an input no gradient
        came to: what only that input reaches gets zeros, where the plain model's backward
        never reaches it. Its nodes are found once forward has run, and watched."""
        for node in nodes_named(outputs, "RegisterPostBackwardFunctionBackward"):
            self._pass_hooks.append(node.register_prehook(self._arrival(node)))
            self._fillers.append(node)

    def _watch_sinks(self, outputs: Any) -> None:
        """A DDP that searches for unused parameters (or builds its static graph) passes
        its module's outputs through its ``_DDPSink``, whose backward passes no gradient to
        an output the loss did not read; autograd runs on into what that output reaches.
        The sinks among the outputs' graph (``replicate()``'s, on the model's own outputs;
        those of DDPs inside the model) are found once forward has run, and watched (the
        outputs' nodes are already). A DDP around the model sinks its outputs after the
        model returns: :meth:`_filled_only` reads that off the outputs' own nodes."""
        watched = {id(edge.grad_fn) for edge in self._edges}
        for node in nodes_named(outputs, "_DDPSinkBackward"):
            if id(node) not in watched:
                self._pass_hooks.append(node.register_prehook(self._arrival(node)))
            self._sink_nodes.append(node)

    def _filled_only(self, edges: list[Edge]) -> set[nn.Parameter]:
        """The parameters only a wrapper's empty gradients reached in the backward that
        ran, where the plain model's backward does not reach them.

        DDP's ``_DDPSink`` passes no gradient to an output the loss did not read
        (the model's outputs, where the DDP around runs the model; a module's
        inside it, :meth:`_watch_sinks`); FSDP2's Function on a unit's inputs
        (:meth:`_watch_units`) fills zeros for an input no gradient came to.
        Either way autograd runs on into what they reach: the accumulators run
        (DDP counts them ready; FSDP2 sets zeros), with no gradient of the
        model's. Told from the gradients that came to those nodes, and to the
        outputs: what those edges reach that the outputs read do not, walking
        around the edges no gradient came to. (A model's own Function that
        passes no gradient on is the model's: the plain model's backward runs
        those accumulators too, and DDP counts them ready.)"""
        read: list[Edge] = []
        starts: list[tuple[Any, int]] = []
        for edge in edges:
            came = self._arrived.get(id(edge.grad_fn)) if edge.grad_fn is not None else None
            if came is not None and edge.output_nr < len(came):
                if came[edge.output_nr]:
                    read.append(edge)
                elif self._sinks:  # the DDP around passed it no gradient: its sink is after
                    starts.append((edge.grad_fn, edge.output_nr))
        for node in self._sink_nodes:
            came = self._arrived.get(id(node), [])
            for k, to in enumerate(sink_passes(node) or ()):
                if to is not None and not (k < len(came) and came[k]):
                    starts.append(node.next_functions[to])
        skip = set()
        for node in self._fillers:
            came = self._arrived.get(id(node), [])
            for k, (next_fn, number) in enumerate(node.next_functions):
                if k < len(came) and not came[k]:
                    starts.append((next_fn, number))
                    skip.add((id(node), k))
        if not starts:
            return set()
        params, canonical = self._tree.params, self._swaps.canonical
        only = live_params((), params, canonical, into_blocks=False, starts=starts)
        plain = live_params((), params, canonical, into_blocks=False, skip=skip, edges=read)
        return only - plain - set(self._returned)

    def _assumed(self, op: str) -> None:
        """A meta run assumed a selection: logged in forward, noted once after it."""
        if self._running:
            self._events.append(Assumed(op, user_site()))
            self._forward_assumed = True
        elif self._calls:
            self._backward_assumed = True

    def _drew(self, source: str, read: str, own: bool) -> None:
        """Forward made a choice (``read``) from a value ``source`` drew at random (``own``:
        from a generator of the model's own), or computed from parameters (:mod:`.draws`)."""
        if self._running:
            if source == COMPUTED:
                if read not in LOGGED:
                    self._events.append(Assumed(read, user_site(), AssumptionKind.COMPUTED))
            else:
                where = "" if read == MOVED else user_site()
                self._events.append(Assumed(source, where, AssumptionKind.DRAWN, own))

    def _accumulated(self, param: nn.Parameter) -> None:
        """A gradient hook: ``param``'s gradient was accumulated, in the pass running now.

        A reentrant checkpoint's block runs a backward pass (an autograd graph
        task) of its own; a wrapper that swaps parameters may run two hooks
        for one accumulation, in the same pass.
        """
        self._order.append(param)
        self._tasks.append((_graph_task(), self._main_now, self._first_ended))

    def _fsdp_reduces(self, param: nn.Parameter) -> None:
        """FSDP2 ran ``param``'s gradient hooks: it reduced a gradient of it."""
        self._fsdp_reduced.add(id(param))

    def walk_outputs(self, outputs: Any) -> None:
        """Walk each output on its own (:attr:`Report.output_reach`): before a backward of
        their sum (``backward=True``) frees the graph the walk needs."""
        edges = output_edges(outputs, self._own())
        self._reach = output_reach(edges, self._tree.params, self._swaps.canonical, self._passes)

    def _finish(self) -> None:
        """The block has ended: take what needs the outputs' edges, then let them go."""
        edges, self._edges = self._edges, []
        self._ended = True
        for hook in self._pass_hooks:
            hook.remove()
        self._pass_hooks = []
        if not self._calls or self._failed:
            return
        self._returned = [edge.param for edge in edges if edge.param is not None]
        if self._backward_assumed and not self._forward_assumed:
            # Only backward selected from unknown values: everything may rest on it.
            self._events.append(Assumed("backward"))
        ran = bool(self._order)
        if ran:
            self._zeros_only = self._filled_only(edges)
            self._ddp_waiting = self.ddps_unfinished()
        if self._readied or self._zeros_only:  # DDP's own: the plain model gives them none
            pairs = zip(self._order, self._tasks, strict=True)
            dropped = self._readied | self._zeros_only
            kept = [(p, t) for p, t in pairs if p not in dropped]
            self._order, self._tasks = [p for p, _ in kept], [t for _, t in kept]
        if ran:
            # A backward ran: the parameters that got a gradient are the live
            # ones, each accumulated once a backward pass (a reentrant
            # checkpoint's block runs a pass of its own, inside one of the
            # caller's backwards). Listed at the first.
            self._passes = {}  # what walk_outputs found before it is the hooks' to say
            for param, (task, within, late) in zip(self._order, self._tasks, strict=True):
                caller = task if task in self._main_passes else within
                if caller is None:
                    # A backward that does not run through forward's graph (a penalty on
                    # the weights alone): not a part of forward's gradient.
                    continue
                self._passes.setdefault(param, set()).add(task)
                self._backwards.setdefault(param, set()).add(caller)
                if late:
                    self._late.add(param)
            self._order = list(unique_params(self._order))
            self._live = set(self._order)
        elif self._with_grad:
            params, canonical = self._tree.params, self._swaps.canonical
            self._reach = output_reach(edges, params, canonical, self._passes)
            self._live = (
                live_params((), params, canonical, self._passes, edges=edges)
                if self._reach is None
                else set().union(*(found for _, found in self._reach))
            )
            self._main_passes = {None}  # the walk's own pass
        # else: a forward under no_grad has no graph, so no liveness to tell.

    def report(
        self, *, target: str | None = None, inputs: Mapping[str, str] | None = None
    ) -> Report:
        """Name and freeze what was recorded.

        Args:
            target: What to call the model; its class name by default.
            inputs: Descriptions of the input tensors; by default
                ``dtype[shape]`` of each tensor argument of the recorded call.

        Raises:
            RecordingError: If the block has not ended, the model was not
                called inside it, or its forward raised.
        """
        name = class_name(self.model)
        if not self._calls:
            how = (
                f"call model.{self._method}(...)"
                if self._method
                else "call the model itself, model(...), not model.forward(...)"
            )
            raise RecordingError(f"{name} was not called inside the record() block ({how})")
        if self._failed:
            raise RecordingError(f"{name}.forward raised inside the record() block")
        if self._calls > 1:
            raise RecordingError(
                f"{name} was called {self._calls} times inside the record() block (a "
                "pipeline schedule's micro-batches, or gradient accumulation's); a recording "
                "covers one forward and its backward, and the backwards of the others ran in "
                "it too"
            )
        if not self._ended:
            raise RecordingError("report() is available once the record() block has ended")
        if self._swaps.unseen:
            names = sorted({self._tree.param_names[id(p)][0] for p in self._swaps.unseen})
            raise RecordingError(
                f"{name}: the parameters put in place of {', '.join(names)} while forward ran "
                "could not be recorded (their class cannot be changed)"
            )
        with gc_paused():
            recorder = Recorder(self.model, self._tree)
            events = self._swaps.resolve(self._events)
            recorder.replay(events)
            known = self._tree.param_names
            # A parameter returned as it is counts as used by the root.
            recorder.use(self._returned)
            report = build_report(
                recorder,
                target=target or name,
                mode=Mode.EAGER,
                concrete_args=self._concrete_args,
                defaults=self._defaults,
                live=self._live,
                backward=self._order or None,
                inputs=self._inputs if inputs is None else inputs,
                trainable=self._trainable,
                outputs=self._reach,
                passes=self._passes,
                main_passes=self._main_passes or None,  # none: no backward reached the outputs
                backwards=self._backwards,
                compiled=self._compiled,
                ddp_params=self._ddp_registered,
                unrecomputed={known[key][0] for key in _never_recomputed(events) if key in known},
            )
            if self._ddp_built is not None:
                report = dataclasses.replace(report, ddp_built=self._ddp_built)
            unreduced = self._unreduced()
            if unreduced:
                report = dataclasses.replace(report, ddp_unreduced=unreduced)
            if self._ddp_waiting:
                report = dataclasses.replace(report, ddp_waiting=self._ddp_waiting)
        if self._clock is None:
            return report
        timing = self._clock.timing([call.parent for call in report.modules])
        if len(timing.calls) != len(report.modules):
            raise RecordingError(
                f"timed {len(timing.calls)} calls but recorded {len(report.modules)}: "
                "calls made outside forward (activation checkpointing's recomputation) "
                "cannot be timed"
            )
        return dataclasses.replace(report, timing=timing)

    def reduced_by_ddp(self) -> tuple[Any, list[tuple[str, nn.Parameter]]] | None:
        """The process group over which the DDP that ran the recorded step averaged its
        gradients into one every rank shares, and the parameters it registers now, by name
        in its order; None when no DDP did (none ran the step, it ran under ``no_sync()``,
        or a comm hook that reduces otherwise).

        Every rank of the group holds the same parameters (DDP broadcasts them when built,
        and each step applies the same gradients), and once the step's backward has ended
        the same gradients: one that differs is one DDP did not reduce, in this step or an
        earlier one.

        Where DDPs run modules inside the model instead (:attr:`ddps_inside`), each
        reducing over the same group: that group and every trainable parameter of the
        model, in ``parameters()`` order, those no DDP registers included.
        """
        names = self._tree.param_names
        if self._ddp_group is not None and self.ddp is not None:
            return self._ddp_group, [(names[id(p)][0], p) for p in self._registered()]
        groups = [inner.reduces for inner in self.ddps_inside]
        if self.ddp is not None or not groups or not all(g is groups[0] for g in groups):
            return None
        if groups[0] is None:
            return None
        return groups[0], [(names[id(p)][0], p) for p in self._trainable if p.requires_grad]

    def ddps_unfinished(self) -> tuple[str, ...]:
        """The DDPs of the recorded step that, its backward over, did not finish reducing
        its gradients on this rank, by DDP's own check (the one its next forward raises on):
        ``""`` for the DDP that ran the model, a module's name for one inside it. Asked
        when the block ends, if a backward ran in it: the report's ``ddp_waiting``.

        Such a DDP waits for a gradient that did not come (under
        ``find_unused_parameters=False``; under ``static_graph=True``, one its first step
        gave). Its all-reduces stopped part-way on this rank, so a collective sent now on
        its process group would pair with another rank's all-reduce of gradients.
        """
        ran = [("", self._ddp_wrapper)] if self._ddp_wrapper is not None else []
        ran += [(inner.name, inner.wrapper) for inner in self.ddps_inside]
        return tuple(name for name, ddp in ran if not reduction_finished(ddp))

    def fsdp_gradients(self) -> list[tuple[str, bool]] | None:
        """Under FSDP2, each trainable parameter it shards, by name in ``parameters()``
        order, with whether it reduced a gradient of it in the recorded step. FSDP2 runs a
        parameter's post-accumulate-grad hooks for each gradient it reduces: of those that
        got one (its zeros for a unit's unused input and what it held from micro-batches it
        did not reduce included), or of all (``set_reduce_scatter_unused_params``); of none
        in a micro-batch it does not reduce. None without FSDP2."""
        if not self._fsdp_managed:
            return None
        names = self._tree.param_names
        return [
            (names[id(p)][0], id(p) in self._fsdp_reduced)
            for p in self._trainable
            if p.requires_grad and id(p) in self._fsdp_managed
        ]

    def _registered(self) -> list[nn.Parameter]:
        """The parameters the DDP around registers, in its order."""
        if self._ddp_registered is not None:
            return self._ddp_registered
        return [p for p in self._trainable if p.requires_grad]

    def _unreduced(self) -> tuple[str, ...]:
        """Under the first step of a DDP with ``static_graph=True``, whose ``_DDPSink`` has it
        all-reduce when the first backward through forward's outputs ends: the parameters it
        registers whose gradient arrived only in later backwards of the caller's own."""
        if not self.ddp_static_first or not self._late:
            return ()
        late = {id(p) for p in self._late}
        names = self._tree.param_names
        return tuple(names[id(p)][0] for p in self._registered() if id(p) in late)


def _reads(events: Sequence[Event]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """The parameters forward read, and those it read inside reentrant checkpoints' blocks
    (which a recompute reads again)."""
    depth, read, in_blocks = 0, [], []
    for event in events:
        if isinstance(event, Checkpointed):
            depth += 1 if event.start else -1
        elif isinstance(event, list):
            read += event
            if depth > 0:
                in_blocks += event
    return read, in_blocks


def _never_recomputed(events: Sequence[Event]) -> set[int]:
    """The ids of the parameters forward read only inside reentrant checkpoints' blocks none of
    whose inputs needed grad (the outermost block open at each read: one inside another is
    run again, with grad, by the outer one's recompute)."""
    blocks: list[bool] = []  # the open blocks: whether a tensor input of each needed grad
    inside: set[int] = set()
    elsewhere: set[int] = set()
    for event in events:
        if isinstance(event, Checkpointed):
            if event.start:
                blocks.append(event.inputs_need_grad)
            elif blocks:
                blocks.pop()
        elif isinstance(event, list):
            (inside if blocks and not blocks[0] else elsewhere).update(id(p) for p in event)
    return inside - elsewhere


def _graph_task() -> int:
    """The autograd graph task running now: one a backward pass (-1 outside one)."""
    current = getattr(torch._C, "_current_graph_task_id", None)  # torch 2.1 and later
    return -1 if current is None else int(current())


def _clock_for(model: nn.Module, tree: ModuleTree) -> Clock:
    """A clock for where the model's parameters are; nothing runs on meta to time."""
    kinds = {p.device.type for p in tree.params} or {"cpu"}
    if "meta" in kinds:
        raise RecordingError(
            f"{class_name(model)} is on the meta device, where nothing runs to be timed: "
            "time it on cpu or cuda"
        )
    return Clock("cuda" if "cuda" in kinds else "cpu")


@contextmanager
def record(
    model: nn.Module,
    *,
    method: str | None = None,
    assume: bool = True,
    timing: bool = False,
    several: bool = False,
) -> Iterator[Recording]:
    """Record the forward of ``model`` run inside the block, and its backward.

    For profiling a real training step: the block runs the model the way the
    training loop does (its own inputs, loss, autocast, ...), and the report
    is built afterwards, so the step itself pays only for the recording.

    Example:
        >>> with execorder.eager.record(model) as recording:
        ...     loss = model(**batch).loss
        ...     loss.backward()
        >>> report = recording.report()

    The first call of ``model`` inside the block is recorded; a second one is
    an error, or with ``several=True`` runs as it is, and ``report()`` then
    refuses the block (``recording.calls`` tells how many there were). When a
    backward runs inside the block, the report has the order
    in which gradients were first accumulated, and the used parameters that
    got none are dead; otherwise liveness comes from the autograd graph of the
    outputs (none under ``no_grad``: then nothing is marked dead). Wrappers,
    parameter classes and hooks are removed when the block ends, also when it
    raises.

    Inside a job the report is the plain model's, under its own names:
    ``model`` may be wrapped in ``DistributedDataParallel``, ``torch.compile``
    or ``checkpoint_wrapper`` (or be the model inside them, called through
    them), sharded with FSDP2's ``fully_shard`` (the unsharded parameters
    forward reads count for the model's own), or have tensor-parallel
    (DTensor) parameters. Anything ``torch.compile`` compiled runs eagerly
    inside the block (``torch.compiler.set_stance("force_eager")``): nothing
    is compiled or recompiled for it, and the steps after it run the graphs
    compiled before. FSDP1 (``FullyShardedDataParallel``), which flattens
    parameters, is refused.

    A model on the meta device runs with real inputs: values computed from
    the inputs alone are real (:mod:`execorder.backends.meta`). A selection
    from values computed from parameters (a router's ``nonzero``) is assumed
    to keep every element, and the report says what rests on it; with
    ``assume=False`` it is a value read instead, which raises.

    With ``timing=True`` each module call's wall time is measured too
    (``perf_counter`` on CPU; CUDA events on a GPU, read once after the
    block) and the report has it as ``timing``.

    Args:
        model: The model, or a wrapper of it (DDP, ``torch.compile``, ...).
        method: The method that runs the step, when the training loop calls
            one instead of the model itself (Lightning's ``"training_step"``);
            the root call is then that method's.
        assume: See above: on meta, assume a selection keeps every element.
        timing: Measure each module call's wall time.
        several: Let the model be called again inside the block (a pipeline
            schedule calls a stage once per micro-batch) rather than raise.

    Raises:
        RecordingError: If ``model`` has lazy modules that have not run yet
            (their parameters do not exist), is on meta with ``timing``, is
            sharded with FSDP1, or is compiled on a torch without
            ``torch.compiler.set_stance`` (before 2.6).
    """
    root = unwrap(model)
    tree = module_tree(root)
    check_recordable(model, root, tree)
    recording = Recording(root, tree, assume=assume, timing=timing)
    recording._method, recording._several = method, several
    with _recorded(recording):
        yield recording


@contextmanager
def _recorded(recording: Recording) -> Iterator[None]:
    """Arm ``recording``: wrap its model's call (or method), hook its parameters' gradients."""
    model, tree = recording.model, recording._tree
    # Compiled blocks inside; compiled code around the model shows as its call runs.
    recording._compiled = compiled(model, tree)
    slot = recording._method or call_slot(model)
    before = model.__dict__.get(slot, ABSENT)
    if getattr(before, "_execorder_recording", False):
        raise RecordingError(f"{class_name(model)} is already being recorded (nested record())")
    call = getattr(model, slot)
    if not callable(call):
        raise RecordingError(f"{class_name(model)}.{slot} is not a method")

    def recorded(*args: Any, **kwargs: Any) -> Any:
        return recording._call(call, args, kwargs)

    recorded._execorder_recording = True  # type: ignore[attr-defined]

    with own_reads():
        trainable = [p for p in tree.params if p.requires_grad]
    recording._trainable = trainable  # before forward, which may switch some off
    mode: MetaRun | WithoutValues | None = None
    if any_on_meta(tree):
        if recording._values:
            mode = recording._meta_run = MetaRun(recording._assumed, assume=recording._assume)
        else:
            mode = recording._without_values = WithoutValues()
    with gc_paused(), uncompiled(), mode or nullcontext():
        # FSDP2 runs the hooks of what it shards for the gradients it reduces (also those it
        # held from micro-batches it did not reduce): not this backward's accumulations.
        recording.fsdp = fsdp_units(tree)
        managed = recording._fsdp_managed = fsdp_managed(tree) if recording.fsdp else set()
        recording._hooks.add([p for p in trainable if id(p) not in managed], recording._accumulated)
        recording._hooks.add([p for p in trainable if id(p) in managed], recording._fsdp_reduces)
        model.__dict__[slot] = recorded
        try:
            yield
        finally:
            restore(model, slot, before)
            recording._hooks.remove()
            recording._finish()


def trace(
    model: nn.Module,
    *,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    backward: bool = False,
    target: str | None = None,
    inputs: Mapping[str, str] | None = None,
    assume: bool = True,
    timing: bool = False,
) -> Report:
    """Run ``model(*args, **kwargs)`` for real and report its execution order.

    Pure: nothing is printed. With the model on the meta device, only what
    the inputs alone decide is computed (see :func:`record` for the policy
    on values computed from parameters). To record a training step of your
    own instead, see :func:`record`.

    Args:
        model: The module to run.
        args: Positional arguments of forward.
        kwargs: Keyword arguments of forward (inputs and concrete values).
        backward: Also run backward on the sum of the outputs and record the
            order in which parameters' gradients are accumulated.
        target: What to call the model in the report; its class name by default.
        inputs: Descriptions of the input tensors for the report; by default
            those of the tensor arguments.
        assume: On meta, assume a selection from values computed from
            parameters keeps every element (and say so in the report);
            False makes it a value read, which raises ``MetaDeviceError``.
        timing: Measure each module call's wall time (CPU or CUDA; not on
            meta) into the report's ``timing``.

    Returns:
        The report, with ``mode`` ``"eager"``.

    Raises:
        ConcreteArgError: If a keyword is not an argument of forward.
        CallError: If forward cannot take these arguments (checked before it runs).
        MetaDeviceError: If forward needs real values and the model or the
            inputs are on the meta device.
        ForwardError: If forward raises otherwise.
    """
    kwargs = dict(kwargs or {})
    check_call(model, tuple(args), kwargs)
    with gc_paused():
        tree = module_tree(model)
        if tree.has_lazy_params:
            # Lazy modules (nn.LazyLinear, ...) create their parameters in
            # their first forward: run it once unrecorded, then record one.
            try:
                with (
                    torch.no_grad(),
                    user_code(f"running {owner(model)}"),
                    MetaRun(assume=assume) if any_on_meta(tree) else nullcontext() as run,
                ):
                    first_args, first_kwargs = run.adopt((args, kwargs)) if run else (args, kwargs)
                    model(*first_args, **first_kwargs)
            except UserExitError:
                raise
            except Exception as exc:
                raise ForwardError(
                    owner(model),
                    f"initializing its lazy modules: {first_line(exc)}",
                    where=user_frame(exc),
                ) from exc
            tree = module_tree(model)
        if any_on_meta(tree):
            # Values on meta cost a dispatch mode on every op: first run without
            # them. An op on meta that needs a value raises there (WithoutValues
            # stops the two that would not) and is noted even if the model
            # catches it; such a forward runs again keeping the values the
            # inputs decide.
            plain: Recording | None
            try:
                plain = _run(model, tree, args, kwargs, backward, assume, timing, values=False)
            except (UserExitError, TooDeepError):
                raise
            except Exception:
                plain = None
            # Refused anything (the model may have caught the error): not the real path.
            if plain is None or plain.refused_on_meta:
                recording = _run(model, tree, args, kwargs, backward, assume, timing)
            else:
                recording = plain
        else:
            recording = _run(model, tree, args, kwargs, backward, assume, timing)
        return recording.report(target=target, inputs=inputs)


def _run(
    model: nn.Module,
    tree: ModuleTree,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    backward: bool,
    assume: bool,
    timing: bool,
    *,
    values: bool = True,
) -> Recording:
    """One recorded forward (and backward); ``values``: keep values on meta (a MetaRun)."""
    recording = Recording(model, tree, assume=assume, timing=timing, values=values)
    with _recorded(recording), ExitStack() as kept:
        try:
            if any_on_meta(tree):  # until backward ends: a recomputation takes forward's kernels
                kept.enter_context(meta_stand_ins(model))
            with torch.enable_grad(), user_code(f"running {owner(model)}"), frames_for(tree):
                outputs = model(*args, **kwargs)
        except UserExitError:
            raise
        except RecursionError as exc:
            if tree.depth < DEEP:
                raise ForwardError(owner(model), first_line(exc), where=user_frame(exc)) from exc
            limit = sys.getrecursionlimit()
            raise TooDeepError(owner(model), tree.depth, limit, running=True) from exc
        except Exception as exc:
            raise forward_failure(model, tree, args, kwargs, exc) from exc
        if backward:
            recording.walk_outputs(outputs)  # while the backward has not freed the graph
            try:
                with user_code(f"running the backward of {owner(model)}"):
                    sum_backward(outputs)
            except UserExitError:
                raise
            except Exception as exc:
                raise forward_failure(model, tree, args, kwargs, exc, "in backward: ") from exc
        del outputs
    return recording
