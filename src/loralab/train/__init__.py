"""Fine-tuning: config, batching, the loop and its hooks, checkpoints, evaluation."""

from loralab.train.callbacks import Callback
from loralab.train.config import TrainConfig
from loralab.train.loop import Trainer, train

__all__ = ["Callback", "TrainConfig", "Trainer", "train"]
