"""A transformers ``TrainerCallback`` that records training steps and checks them.

    from execorder.training.transformers import ExecOrderCallback

    trainer = Trainer(model, args, train_dataset=data, callbacks=[ExecOrderCallback()])
    trainer.train()   # under DDP with an unused parameter: stops at step 1, naming it

The recorded step is the Trainer's own (its inputs, loss and DDP wrapper);
with gradient accumulation, the micro-batch DDP reduces (the last: the ones
before run under its ``no_sync()``), or the first where none is skipped.
Needs ``transformers`` (``pip install execorder[hf]``).
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from execorder.training import WatchingCallback

__all__ = ["ExecOrderCallback"]


class ExecOrderCallback(WatchingCallback, TrainerCallback):
    """Record chosen steps of a ``Trainer`` run; stop before DDP fails; compare ranks.

    Takes the options of :class:`~execorder.training.WatchingCallback`
    (``steps``, ``compare_every``, ``stop_on_no_grad``, ``stop_on_divergence``,
    ``output``); the reports are in ``reports``, the comparisons in
    ``comparisons``. The Trainer sets ``find_unused_parameters=False`` for a
    model with activation checkpointing, or with
    ``ddp_find_unused_parameters=False``.
    """

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        step, model = state.global_step + 1, kwargs.get("model")
        if model is not None and self.watch.wants(step):
            self.watch.begin(model, step)

    def on_substep_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # A micro-batch of an accumulated step: DDP reduces with the last, which decides.
        if self.watch.unsynced:
            self.watch.again()
        else:
            self.watch.end()

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.watch.end()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.watch.end()  # an older transformers has no on_pre_optimizer_step

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.watch.abort()
