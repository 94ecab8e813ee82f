"""Inside a training loop: record chosen steps, stop before DDP's step-2 crash, compare ranks.

:class:`StepWatch` is what the callbacks for the trainers people use share
(:mod:`execorder.training.transformers` for transformers' ``Trainer``,
:mod:`execorder.training.lightning` for Lightning): the trainer's hooks tell
it where a step begins and where its backward has ended, and it records the
step with :func:`execorder.record`, then checks it:

- with ``compare_every=N``, every Nth step is compared across ranks
  (:func:`execorder.ranks.compare`); ranks that do not agree stop the
  run with :class:`~execorder.errors.RanksDivergedError`;
- trainable parameters that got no gradient stop the run with
  :class:`~execorder.errors.NoGradientError` where DDP would fail on them
  (``find_unused_parameters=False``, or wherever DDP's own check says it has
  not finished reducing the step, ``static_graph=True`` included: the next
  step raises "Expected to have finished reduction in the prior
  iteration"), before that step starts;
- trainable parameters given their gradient in several backward passes
  (reentrant checkpoints) stop it with
  :class:`~execorder.errors.SplitGradientError` where DDP loses part of it
  (no ``static_graph``: DDP raises, or its ranks drift apart silently);
- a DDP built when other parameters required grad (``requires_grad_`` after
  wrapping) stops it with :class:`~execorder.errors.DdpBuiltError`: DDP waits
  for a parameter frozen since (the next step fails) and never all-reduces one
  made trainable since (the ranks drift apart silently);
- a step that calls backward once per loss over one forward stops it with
  :class:`~execorder.errors.SplitGradientError` under every DDP setting, and
  a gradient penalty before the loss in static_graph's first step with
  :class:`~execorder.errors.UnreducedGradientError`;
- ranks that hold different gradients of what DDP registers once the step's
  backward has ended (a part DDP did not reduce, whatever put it there) stop
  it with :class:`~execorder.errors.GradientsDifferError`, and ranks whose
  copies of them already differ (an earlier step let a part through) with
  :class:`~execorder.errors.ReplicasDifferError`;
- under FSDP2, ranks that gave gradients to different parameters stop it
  with :class:`~execorder.errors.GradientsApartError`: FSDP2 reduced one
  rank's gradient of one parameter with another's of another;
- a step whose modules were chosen by a random draw (LayerDrop) or by values
  computed from parameters (a router) is warned of, without stopping: under
  DDP where every parameter got a gradient (a step that chooses otherwise
  fails it), under FSDP2 on several ranks always (ranks that choose
  otherwise hang in a unit's all-gather, or pair their gradients wrongly).

Every rank takes the same decision: the checks that talk between ranks come
first, and the decision to stop is agreed over the process group, so that no
rank is left waiting for one that stopped. The exception is a rank whose DDP
has not finished reducing the step (a branch that rank did not run): its
all-reduces stopped part-way, so anything it sent would pair with another
rank's all-reduce of gradients. It decides alone and sends nothing; the
ranks that wait for it in backward are ended by the launcher, as they are
without the watch once it fails at the next step.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from execorder.analysis.ranks import RankComparison
from execorder.backends.eager import Recording, record
from execorder.errors import (
    DdpBuiltError,
    ExecOrderError,
    GradientsApartError,
    GradientsDifferError,
    NoGradientError,
    NotReplicatedError,
    RanksDivergedError,
    RecordingError,
    ReplicasDifferError,
    SplitGradientError,
    UnreducedGradientError,
)
from execorder.output import files
from execorder.output.views.report import assumption_places
from execorder.ranks import (
    Unreduced,
    collective_device,
    compare,
    gradients_apart,
    unreduced,
)
from execorder.report import AssumptionKind, Report
from execorder.spelling import ddps_named

__all__ = ["StepWatch", "WatchingCallback"]

log = logging.getLogger("execorder")


class StepWatch:
    """Which training steps to record, and what to check after each.

    Args:
        steps: The steps to record, counted from 1 (the first optimizer step).
        compare_every: Also record every Nth step and compare it across
            ranks (under an initialized process group of more than one rank).
        stop_on_no_grad: When trainable parameters get no gradient, or get
            it in several backward passes: None (the default) stops only
            where DDP fails on it (the step ran under
            ``DistributedDataParallel`` with ``find_unused_parameters=False``
            and no ``static_graph``; for several passes of reentrant
            checkpoints, no ``static_graph``; for several backwards of the
            step's own, any DDP); True stops always; False never (the report
            still says so, and what DDP left unreduced is logged).
        stop_on_divergence: Stop when compared ranks do not agree; else log it.
        output: Write each recorded step's report as JSON to this path;
            ``{step}`` and ``{rank}`` in it are filled in.
        target: What to call the model in reports; its class name by default.

    Attributes:
        reports: The reports of the recorded steps, by step.
        comparisons: The comparisons across ranks, by step.
    """

    def __init__(
        self,
        *,
        steps: Iterable[int] = (1,),
        compare_every: int | None = None,
        stop_on_no_grad: bool | None = None,
        stop_on_divergence: bool = True,
        output: str | Path | None = None,
        target: str | None = None,
    ) -> None:
        self.steps = frozenset(steps)
        if any(step < 1 for step in self.steps):
            raise ValueError("steps are counted from 1")
        if compare_every is not None and compare_every < 1:
            raise ValueError("compare_every must be a positive number of steps")
        self.compare_every = compare_every
        self.stop_on_no_grad = stop_on_no_grad
        self.stop_on_divergence = stop_on_divergence
        self.output = None if output is None else str(output)
        self.target = target
        self.reports: dict[int, Report] = {}
        self.comparisons: dict[int, RankComparison] = {}
        self._armed: AbstractContextManager[Recording] | None = None
        self._recording: Recording | None = None
        self._step = 0
        self._again: tuple[nn.Module, str | None] | None = None

    def wants(self, step: int) -> bool:
        """Whether ``step`` is to be recorded (and not recorded yet)."""
        if step in self.reports or self._armed is not None:
            return False
        return step in self.steps or self._compares(step)

    def _compares(self, step: int) -> bool:
        return self.compare_every is not None and step % self.compare_every == 0

    def begin(self, model: nn.Module, step: int, *, method: str | None = None) -> None:
        """Start recording ``step``: the next call of ``model`` (or its ``method``) and backward."""
        if self._armed is not None:
            raise RecordingError(f"step {self._step} is still being recorded")
        armed = record(model, method=method, several=True)
        self._recording = armed.__enter__()
        self._armed, self._step = armed, step
        self._again = (model, method)

    @property
    def active(self) -> bool:
        """Whether a step is being recorded."""
        return self._armed is not None

    @property
    def unsynced(self) -> bool:
        """Whether the micro-batch being recorded ran under DDP's ``no_sync()`` (gradient
        accumulation): DDP reduces its gradients with a later micro-batch's, the one that
        decides what DDP sees. Record that one instead: :meth:`again`, or :meth:`abort`
        and :meth:`begin` before it."""
        return self._recording is not None and self._recording.ddp_syncs is False

    def again(self) -> None:
        """Drop this micro-batch's recording and record the step's next one instead (the
        next call of the same model)."""
        if self._armed is None or self._again is None:
            return
        model, method = self._again
        step = self._step
        self.abort()
        self.begin(model, step, method=method)

    def end(self) -> Report | None:
        """The step's backward has ended: build its report and check it.

        Returns:
            The report, or None when no step was being recorded, or when the model was
            called more than once while it was (on any rank: a pipeline schedule's
            micro-batches), which is logged.

        Raises:
            RanksDivergedError: If the step was compared and the ranks do not
                agree (with ``stop_on_divergence``).
            NoGradientError: If trainable parameters got no gradient where
                the policy stops on it.
            SplitGradientError: If trainable parameters got their gradient in
                several backward passes where the policy stops on it.
            DdpBuiltError: If the DDP that ran the step was built when other
                parameters required grad, so that it fails at the next step or
                never all-reduces some gradients (unless ``stop_on_no_grad`` is
                False: then it is logged).
            UnreducedGradientError: If, in the first step under a DDP with
                ``static_graph=True``, gradients came after its all-reduce.
            GradientsDifferError: If, under a DDP that reduced this step's
                gradients, the ranks hold different ones of what it registers.
            ReplicasDifferError: If, under such a DDP, the ranks' copies of what it
                registers already differ.
            NotReplicatedError: If, where DDPs run modules inside the model, the ranks
                hold different gradients or copies of parameters none registers.
            GradientsApartError: If, under FSDP2, the ranks gave gradients to different
                parameters.
            RecordingError: If no parameter was seen used while forward ran
                (unless ``stop_on_no_grad`` is False: then it is logged).
        """
        if self._armed is None or self._recording is None:
            return None
        armed, recording, step = self._armed, self._recording, self._step
        self._armed = self._recording = None
        armed.__exit__(None, None, None)
        report = recording.report(target=self.target) if recording.calls == 1 else None
        unfinished = () if report is None else report.ddp_waiting
        if report is not None and unfinished and _world() > 1:
            return self._alone(step, report, recording, unfinished)
        if _agreed(recording.calls > 1):  # every rank alike, before anything else it sends
            log.warning(
                "execorder: step %d not checked: the model was called %d times while it was "
                "recorded (a pipeline schedule's micro-batches, or gradient accumulation "
                "without StepWatch.again() after each micro-batch's backward; on some rank); "
                "a recording covers one forward and its backward",
                step,
                recording.calls,
            )
            return None
        if report is None:  # not so: every rank called the model once
            report = recording.report(target=self.target)
        self._keep(step, report)
        # What talks between ranks first, on every rank alike, then what stops one.
        diverged = None
        if self._compares(step) and _world() > 1:
            result = self.comparisons[step] = compare(report)
            if not result.agree:
                diverged = _diverged(step, result)
                log.warning("execorder: %s", diverged)
        apart, differ = unreduced(recording) if _world() > 1 else Unreduced((), ())
        # FSDP2 reduces what got a gradient as one buffer: ranks with other sets paired them.
        graded = gradients_apart(recording) if recording.fsdp and _world() > 1 else ()
        # DDPs inside the model: what none of them registers has no DDP to average it.
        own = {name for inner in recording.ddps_inside for name in inner.registered}
        differs = {*apart, *differ} if recording.ddp is None and own else set()
        loose = [p.name for p in report.all_params() if p.name in differs and p.name not in own]
        apart = tuple(n for n in apart if n not in loose)
        differ = tuple(n for n in differ if n not in loose)
        inside = [inner.name for inner in recording.ddps_inside]
        stopping: ExecOrderError | None = None
        if diverged is not None and self.stop_on_divergence:
            stopping = diverged
        elif report.no_use_seen:
            unseen = RecordingError(
                f"step {step}: no parameter of {report.target} was seen used while forward "
                "ran: it reads none, or reads copies of them that the recording does not see"
            )
            if self.stop_on_no_grad is False:  # asked never to stop: said, not raised
                log.warning("execorder: %s", unseen)
            else:
                stopping = unseen
        else:
            stopping = self._no_grad(step, report, recording, unfinished=unfinished)
        # Parts DDP left unreduced: in an earlier step (the copies differ), or in this one.
        static = recording.ddp is not None and recording.ddp.static_graph
        for left in (
            GradientsApartError(step, graded),
            ReplicasDifferError(step, apart),
            GradientsDifferError(step, differ, static_graph=static),
            NotReplicatedError(step, loose, inside=inside),
        ):
            if stopping is None and left.params:
                if self.stop_on_no_grad is False:
                    log.warning("execorder: %s", left)
                else:
                    stopping = left
        if not _agreed(stopping is not None):
            return report
        raise stopping or RecordingError(f"step {step}: another rank stopped the run")

    def _keep(self, step: int, report: Report) -> None:
        """Keep the step's report (and write it, with ``output``), and log what it says."""
        self.reports[step] = report
        if self.output is not None:
            _write(report, self.output.format(step=step, rank=_rank()))
        log.info(
            "execorder: step %d: %d module calls, %d of %d parameters used, "
            "%d trainable get no gradient",
            step,
            report.summary.calls,
            report.summary.params_used,
            report.summary.params_total,
            report.summary.params_no_grad,
        )

    def _alone(
        self, step: int, report: Report, recording: Recording, unfinished: tuple[str, ...]
    ) -> Report:
        """End a step whose DDP stopped reducing part-way on this rank, sending nothing.

        A gradient that DDP waits for never came here, so this rank left the
        all-reduces of that bucket and the ones after it unsent: a rank that sent
        them waits in backward for this one, and whatever this rank sent now
        would pair with them (gloo aborts on the size; NCCL does not check).
        DDP fails at the next step on this rank whatever the others did, so it
        decides alone, without comparing anything across ranks.
        """
        self._keep(step, report)
        rank = _rank()
        stopping = self._no_grad(step, report, recording, unfinished=unfinished, rank=rank)
        if stopping is not None:
            raise stopping
        ddps = ddps_named(unfinished)
        if self.stop_on_no_grad is not False:  # DDP's own check, where the report names none
            raise RecordingError(
                f"step {step}: on rank {rank}, the DDP around {ddps} did not finish reducing "
                "the step's gradients, so it fails at the next step; the recording names no "
                "parameter it waits for"
            )
        log.warning(
            "execorder: step %d: on rank %d, the DDP around %s did not finish reducing the "
            "step's gradients (it fails at the next step); the step is not compared across "
            "ranks",
            step,
            rank,
            ddps,
        )
        return report

    def abort(self) -> None:
        """Stop recording without a report (the step raised, or training ended)."""
        armed = self._armed
        self._armed = self._recording = None
        if armed is not None:
            armed.__exit__(None, None, None)

    def _no_grad(
        self,
        step: int,
        report: Report,
        recording: Recording,
        *,
        unfinished: tuple[str, ...] = (),
        rank: int | None = None,
    ) -> ExecOrderError | None:
        """The error to stop with for gradients DDP loses, if the policy stops: parameters
        without one, then parameters given theirs in several backward passes.
        ``unfinished``: the DDPs that did not finish reducing (``recording.ddps_unfinished``),
        which fail at the next step whatever their settings; ``rank``: the rank that decides
        alone (:meth:`_alone`), named in the error."""
        missing = _missing(report)
        ddp = recording.ddp
        built = report.ddp_built
        if built is not None and ddp is not None:
            waits = ddp.fails_without_gradient
            if built.trainable_since or (built.frozen_since and waits):
                stale = DdpBuiltError(
                    step,
                    (built.params, built.bytes),
                    (built.params_now, built.bytes_now),
                    waits=waits,
                )
                if self.stop_on_no_grad is not False:
                    return stale
                log.warning("execorder: %s", stale)
        # Under no_sync() (a micro-batch of gradient accumulation) DDP reduces nothing: what
        # it fails on is decided by the micro-batch it reduces, not by this one.
        syncs = recording.ddp_syncs is not False
        waits = ddp is not None and syncs and ddp.fails_without_gradient
        under_ddp = waits or "" in unfinished
        inside = _lost_inside(report, recording, missing, unfinished)
        if inside and not under_ddp and self.stop_on_no_grad is None:
            missing = tuple(p for p in missing if p.name in inside)  # what those DDPs fail on
        if missing and (
            under_ddp or bool(inside) if self.stop_on_no_grad is None else self.stop_on_no_grad
        ):
            return NoGradientError(
                step,
                [p.name for p in missing],
                [inside[p.name][1] if p.name in inside else p.ddp_index for p in missing],
                under_ddp=under_ddp or bool(inside),
                recompute_only=report.recompute_only,
                never_recomputed=[p.name for p in missing if p.name in report.never_recomputed],
                inside=() if under_ddp else _modules_of(recording, inside.values()),
                rank=rank,
                static_graph=_waits_by(ddp, waits)
                if under_ddp
                else _static_only(recording, inside),
            )
        chosen = [(said, made) for kind, *said in _CHOSEN if (made := report.assumed(kind))]
        for (how, otherwise, fix), made in chosen:
            if waits and not missing:
                log.warning(
                    "execorder: step %d: which modules run is %s (%s): every trainable "
                    "parameter got a gradient in this step, and %s fails DDP with "
                    "find_unused_parameters=False; pass find_unused_parameters=True%s",
                    step,
                    how,
                    ", ".join(assumption_places(made)),
                    otherwise,
                    fix,
                )
        if chosen and recording.fsdp and _world() > 1:
            log.warning(
                "execorder: step %d: under FSDP2, which modules run is %s: a step in which "
                "the ranks choose otherwise (each its own batch or draw) hangs in the "
                "all-gather of a unit one rank skips, or reduces one rank's gradient of a "
                "parameter with another's of another, with no error",
                step,
                " and ".join(
                    f"{said[0]} ({', '.join(assumption_places(made))})" for said, made in chosen
                ),
            )
        if missing and recording.ddp_static_first:
            log.warning(
                "execorder: step %d: under DDP(static_graph=True), %d trainable parameters got "
                "no gradient in its first step (%s), which fixes its graph for every step "
                "from here: a later step that gives one a gradient never all-reduces it (the "
                "ranks drift apart with no error), and where an output the loss does not read "
                'reaches them, DDP waits for them and a later step fails ("Expected to have '
                'finished reduction"); record a later step (steps=, compare_every=): the '
                "watch then checks DDP's reduction and the ranks' gradients",
                step,
                len(missing),
                ", ".join(p.name for p in missing[:8]) + (", ..." if len(missing) > 8 else ""),
            )
        seen = report.as_ddp_sees_it()
        split, by_backwards = dict(seen.split_gradients), seen.split_by_backwards
        # static_graph takes reentrant checkpoints' passes, not the caller's own backwards.
        if ddp is not None and ddp.static_graph and self.stop_on_no_grad is None:
            split = {name: n for name, n in split.items() if name in by_backwards}
        under_ddp = ddp is not None and syncs and (not ddp.static_graph or bool(by_backwards))
        if ddp is not None and not syncs and (missing or split):
            lost = [p.name for p in missing] or list(split)
            log.warning(
                "execorder: step %d: the micro-batch recorded ran under DDP's no_sync(), which "
                "reduces nothing, so whether DDP fails is decided by the micro-batch it reduces "
                "(here %s %s); record that one: StepWatch.again() after this micro-batch's "
                "backward",
                step,
                ", ".join(lost[:8]) + (", ..." if len(lost) > 8 else ""),
                "got no gradient" if missing else "got theirs in several passes",
            )
        if split and (under_ddp if self.stop_on_no_grad is None else self.stop_on_no_grad):
            own = report.own_checkpoints
            return SplitGradientError(
                step, split, under_ddp=under_ddp, checkpoints=own, by_backwards=by_backwards
            )
        if seen.ddp_unreduced and self.stop_on_no_grad is not False:
            return UnreducedGradientError(step, seen.ddp_unreduced)
        return None


def _missing(report: Report) -> tuple[Any, ...]:
    """The trainable parameters DDP would wait for that got no gradient.

    Dead only in eager's graph of compiled code, the compiled graph may hold them (DDP then
    counts them ready); if it does not, DDP itself says so at the next step.
    """
    held = {p.name for p in report.held_by_compiled_code()}
    return tuple(p for p in report.no_grad() if p.name not in held)


def _lost_inside(
    report: Report, recording: Recording, missing: Iterable[Any], unfinished: tuple[str, ...]
) -> dict[str, tuple[str, int]]:
    """Of ``missing``, those a DDP inside the model fails on (one that ran in the step, with
    ``find_unused_parameters=False`` and no ``static_graph``, or one that did not finish
    reducing, named in ``unfinished``): each with that DDP's module and its index there."""
    called = {call.name for call in report.modules}
    waiting = {
        name: (inner.name, index)
        for inner in recording.ddps_inside
        if (inner.settings.fails_without_gradient or inner.name in unfinished)
        and inner.name in called
        for index, name in enumerate(inner.registered)
    }
    return {p.name: waiting[p.name] for p in missing if p.name in waiting}


def _waits_by(ddp: Any, waits: bool) -> bool | None:
    """Why the DDP around the model fails on parameters without a gradient (the
    ``static_graph`` of :class:`NoGradientError`): False where it waits for every one, True
    where ``static_graph=True`` took them for used, None where it searches for unused ones
    and did not finish reducing all the same."""
    if waits:
        return False
    return True if ddp is not None and ddp.static_graph else None


def _static_only(recording: Recording, lost: dict[str, tuple[str, int]]) -> bool:
    """Whether every DDP inside the model that fails on ``lost`` does so under
    ``static_graph=True``, having taken those parameters for used in its first step."""
    named = {module for module, _ in lost.values()}
    failing = [inner for inner in recording.ddps_inside if inner.name in named]
    return bool(failing) and not any(inner.settings.fails_without_gradient for inner in failing)


def _modules_of(recording: Recording, lost: Iterable[tuple[str, int]]) -> list[str]:
    """The modules of the DDPs inside the model that ``lost`` names, in the model's order."""
    named = {module for module, _ in lost}
    return [inner.name for inner in recording.ddps_inside if inner.name in named]


_CHOSEN = (
    (
        AssumptionKind.DRAWN,
        "drawn at random",
        "a step that draws otherwise (LayerDrop skipping a layer)",
        ", or turn the draw off",
    ),
    (
        AssumptionKind.COMPUTED,
        "a router's choice, from values computed from parameters",
        "a batch that leaves an expert idle",
        "",
    ),
)
"""The choices a step's structure may rest on, and what the watch says of each."""


class WatchingCallback:
    """What the trainers' callbacks share: a :class:`StepWatch` of their options, and its results.

    Args:
        steps: The optimizer steps to record, counted from 1.
        compare_every: Also record every Nth step and compare it across ranks.
        stop_on_no_grad: None (the default): stop when DDP would fail on a
            trainable parameter without a gradient (``find_unused_parameters=False``
            and no ``static_graph``, read off the DDP that ran the model);
            True: always; False: never.
        stop_on_divergence: Stop when compared ranks do not agree; else log it.
        output: Write each recorded step's report as JSON here (``{step}``
            and ``{rank}`` are filled in).
    """

    def __init__(
        self,
        *,
        steps: Iterable[int] = (1,),
        compare_every: int | None = None,
        stop_on_no_grad: bool | None = None,
        stop_on_divergence: bool = True,
        output: str | Path | None = None,
    ) -> None:
        self.watch = StepWatch(
            steps=steps,
            compare_every=compare_every,
            stop_on_no_grad=stop_on_no_grad,
            stop_on_divergence=stop_on_divergence,
            output=output,
        )

    @property
    def reports(self) -> dict[int, Report]:
        """The recorded reports, by step."""
        return self.watch.reports

    @property
    def comparisons(self) -> dict[int, RankComparison]:
        """The comparisons across ranks, by step."""
        return self.watch.comparisons


def _diverged(step: int, result: RankComparison) -> RanksDivergedError:
    first = result.first_divergence
    return RanksDivergedError(
        step,
        [g.ranks for g in result.groups],
        call=None if first is None else first.index,
        by_group=() if first is None else first.by_group,
        params=[d.param for d in result.status_differs],
        errors=[(g.ranks, g.error) for g in result.errors if g.error is not None],
    )


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _agreed(stop: bool) -> bool:
    """Whether any rank stops: every rank learns it, so that all stop together."""
    if _world() == 1:
        return stop
    flag = torch.tensor([int(stop)], device=collective_device())
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def _write(report: Report, path: str) -> None:
    import json

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    files.write(target, json.dumps(report.to_dict(), indent=2) + "\n")
