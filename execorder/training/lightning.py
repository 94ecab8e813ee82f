"""A Lightning ``Callback`` that records training steps and checks them.

    from execorder.training.lightning import ExecOrderCallback

    trainer = L.Trainer(strategy="ddp", callbacks=[ExecOrderCallback()])
    trainer.fit(module, data)   # an unused parameter: stops at step 1, naming it

The recorded call is the LightningModule's ``training_step`` (what Lightning
runs, through DDP's forward or directly), with the backward that follows it;
with gradient accumulation the first batch of the step is recorded.
Needs ``lightning`` (``pip install execorder[lightning]``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback

from execorder.analysis.ranks import RankComparison
from execorder.report import Report
from execorder.training import StepWatch

__all__ = ["ExecOrderCallback"]


class ExecOrderCallback(Callback):
    """Record chosen steps of a Lightning run; stop before DDP fails; compare ranks.

    Args:
        steps: The optimizer steps to record, counted from 1.
        compare_every: Also record every Nth step and compare it across ranks.
        stop_on_no_grad: None (default): stop when DDP would fail on a
            parameter without a gradient (Lightning's ``strategy="ddp"``
            keeps DDP's ``find_unused_parameters=False``); True: always;
            False: never.
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

    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step + 1
        if self.watch.wants(step):
            self.watch.begin(pl_module, step, method="training_step")

    def on_after_backward(self, trainer: Any, pl_module: Any) -> None:
        self.watch.end()

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.watch.end()  # a step without a backward (manual optimization that skipped it)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.watch.abort()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.watch.abort()
