"""The task head alone: every pretrained weight frozen, only the classification head trains (a linear probe on
the frozen features, plus whatever the head holds) — the r = 0 rung of a rank ladder."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from loralab.errors import ConfigError
from loralab.io.atomic import atomic_save_tensors
from loralab.methods.base import TrainingMethod, register
from loralab.rundir import HEAD

if TYPE_CHECKING:
    from torch import nn

HEAD_FILE = "head.safetensors"


@register
class HeadOnly(TrainingMethod):
    """Only the task head trains; the run keeps the head's weights (safetensors) and loads them onto the base."""

    name = "head"
    summary = "only the task head trains (frozen features: the rank-0 reference)"
    saved_as = HEAD

    def check(self, cfg) -> None:
        if cfg.fsdp:
            raise ConfigError("{} shards the weights of full, lora and dora; {} head trains the head alone.",
                              ("fsdp", "method"))

    def prepare(self, model: nn.Module, cfg, task: str) -> nn.Module:
        from loralab import models

        if task != "classification":
            raise ConfigError("{} head trains a classification head; prompt/response data has none (a causal LM's "
                              "output layer is its vocabulary). Use lora, dora or full.", ("method",))
        model.requires_grad_(False)
        for name in models.head_names(model):
            getattr(model, name).requires_grad_(True)
        return model

    def save(self, trained: nn.Module, tokenizer, out: Path, write: bool = True, training=None) -> Path:
        from loralab import models

        if write:
            state = {f"{name}.{key}": value for name in models.head_names(trained)
                     for key, value in getattr(trained, name).state_dict().items()}
            (out / self.saved_as).mkdir(parents=True, exist_ok=True)
            atomic_save_tensors(out / self.saved_as / HEAD_FILE, state)
        return out / self.saved_as

    def attach(self, model: nn.Module, cfg, saved: Path) -> nn.Module:
        from safetensors.torch import load_file

        missing, unexpected = model.load_state_dict(load_file(str(saved / HEAD_FILE)), strict=False)
        if unexpected:
            raise ConfigError(f"{saved / HEAD_FILE} holds {unexpected[:3]}, which this model does not have.")
        return model
