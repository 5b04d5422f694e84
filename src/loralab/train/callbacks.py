"""Hooks into the training loop, named as in Hugging Face's ``TrainerCallback``.

A callback sees the `Trainer` (its config, model, state, metrics log) at these points:

* ``on_train_begin(trainer)`` — model built, optimizer ready, checkpoint restored;
* ``on_step(trainer, loss)`` — after each optimizer step (``trainer.state.step`` counts them);
* ``on_eval(trainer, record)`` — after each validation pass, with its metrics record;
* ``on_checkpoint(trainer, path)`` — after a checkpoint is written;
* ``on_train_end(trainer, result)`` — after the test pass, with its `RunResult` (result.json).

Measurements plug in here (`loralab.train.telemetry`); the loop knows none of them.
"""

from __future__ import annotations

from pathlib import Path


class Callback:
    """Base class: every hook does nothing; override the ones you need."""

    def on_train_begin(self, trainer) -> None:
        pass

    def on_step(self, trainer, loss: float) -> None:
        pass

    def on_eval(self, trainer, record: dict) -> None:
        pass

    def on_checkpoint(self, trainer, path: Path) -> None:
        pass

    def on_train_end(self, trainer, result) -> None:
        pass
