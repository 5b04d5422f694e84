"""Fine-tuning: config, batching, the loop and its hooks, checkpoints, evaluation."""

from typing import TYPE_CHECKING

from loralab.lazy import lazy_exports

if TYPE_CHECKING:
    from loralab.train.callbacks import Callback
    from loralab.train.config import TrainConfig
    from loralab.train.loop import Trainer, train

__getattr__, __dir__ = lazy_exports(__name__, {
    "Callback": "loralab.train.callbacks",
    "TrainConfig": "loralab.train.config",
    "Trainer": "loralab.train.loop",
    "train": "loralab.train.loop",
})

__all__ = ["Callback", "TrainConfig", "Trainer", "train"]
