"""Fine-tuning: config, batching, the loop, checkpoints, evaluation."""

from loralab.train.config import TrainConfig
from loralab.train.loop import train

__all__ = ["TrainConfig", "train"]
