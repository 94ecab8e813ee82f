"""A Lightning ``Callback`` that records training steps and checks them.

    from execorder.training.lightning import ExecOrderCallback

    trainer = L.Trainer(strategy="ddp", callbacks=[ExecOrderCallback()])
    trainer.fit(module, data)   # an unused parameter: stops at step 1, naming it

The recorded call is the LightningModule's ``training_step`` (what Lightning
runs, through DDP's forward or directly), with the backward that follows it;
with gradient accumulation, the batch DDP reduces (the last: the ones before
run under its ``no_sync()``), or the first where none is skipped.
Needs ``lightning`` (``pip install execorder[lightning]``).
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback

from execorder.training import WatchingCallback

__all__ = ["ExecOrderCallback"]


class ExecOrderCallback(WatchingCallback, Callback):
    """Record chosen steps of a Lightning run; stop before DDP fails; compare ranks.

    Takes the options of :class:`~execorder.training.WatchingCallback`
    (``steps``, ``compare_every``, ``stop_on_no_grad``, ``stop_on_divergence``,
    ``output``); the reports are in ``reports``, the comparisons in
    ``comparisons``. Lightning's ``strategy="ddp"`` keeps DDP's
    ``find_unused_parameters=False``.
    """

    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step + 1
        if self.watch.wants(step):
            self.watch.begin(pl_module, step, method="training_step")

    def on_after_backward(self, trainer: Any, pl_module: Any) -> None:
        if self.watch.unsynced:  # DDP reduces with a later batch: that one is recorded
            self.watch.abort()
        else:
            self.watch.end()

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.watch.end()  # a step without a backward (manual optimization that skipped it)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.watch.abort()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.watch.abort()
