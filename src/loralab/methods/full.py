"""Full fine-tuning: every weight trains; the run keeps the whole model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

from loralab.methods.base import TrainingMethod, register
from loralab.rundir import MODEL

if TYPE_CHECKING:
    from torch import nn


@register
class FullFineTuning(TrainingMethod):
    """Every weight trains; the run keeps the whole model (safetensors) and its tokenizer."""

    name = "full"
    summary = "every weight trains (the reference)"
    saved_as = MODEL

    def prepare(self, model: nn.Module, cfg, task: str) -> nn.Module:
        model.requires_grad_(True)
        return model

    def save(self, trained: nn.Module, tokenizer, out: Path, write: bool = True, training=None) -> Path:
        from loralab.io.atomic import atomic_directory
        from loralab.io.peft_format import whole

        state = {k: whole(v) for k, v in trained.state_dict().items()}  # FSDP: every process gathers its shards
        if write:
            with atomic_directory(out / self.saved_as) as staging:
                trained.save_pretrained(staging, state_dict=state, safe_serialization=True)
                tokenizer.save_pretrained(staging)
        return out / self.saved_as

    def load(self, cfg, run_dir: Path, task: str, num_labels: Optional[int]):
        from loralab import models

        return models.load(str(run_dir / self.saved_as), task, num_labels=num_labels,
                           attn_implementation=models.attention_for(cfg.precision))
