"""A transformers ``TrainerCallback`` that records training steps and checks them.

    from execorder.training.transformers import ExecOrderCallback

    trainer = Trainer(model, args, train_dataset=data, callbacks=[ExecOrderCallback()])
    trainer.train()   # under DDP with an unused parameter: stops at step 1, naming it

The recorded step is the Trainer's own (its inputs, loss and DDP wrapper);
with gradient accumulation the first micro-batch of the step is recorded.
Needs ``transformers`` (``pip install execorder[hf]``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from execorder.analysis.ranks import RankComparison
from execorder.report import Report
from execorder.training import StepWatch

__all__ = ["ExecOrderCallback"]


class ExecOrderCallback(TrainerCallback):
    """Record chosen steps of a ``Trainer`` run; stop before DDP fails; compare ranks.

    Args:
        steps: The optimizer steps to record, counted from 1.
        compare_every: Also record every Nth step and compare it across ranks.
        stop_on_no_grad: None (default): stop when DDP would fail on a
            parameter without a gradient (``find_unused_parameters=False``,
            as the Trainer sets for a model with activation checkpointing or
            when ``ddp_find_unused_parameters=False``); True: always; False: never.
        stop_on_divergence: Stop when compared ranks do not agree; else log it.
        output: Write each recorded step's report as JSON here (``{step}``
            and ``{rank}`` are filled in).

    Attributes:
        reports: The recorded reports, by step.
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
        return self.watch.reports

    @property
    def comparisons(self) -> dict[int, RankComparison]:
        return self.watch.comparisons

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        step, model = state.global_step + 1, kwargs.get("model")
        if model is not None and self.watch.wants(step):
            self.watch.begin(model, step)

    def on_substep_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.watch.end()  # the first micro-batch of an accumulated step

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.watch.end()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.watch.end()  # an older transformers has no on_pre_optimizer_step

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.watch.abort()
