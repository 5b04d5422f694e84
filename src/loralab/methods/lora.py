"""LoRA and DoRA: a low-rank adapter (plus DoRA's magnitude vector) and a fully trained task head."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import loralab as ll
from loralab.errors import ConfigError
from loralab.methods.base import TrainingMethod, register
from loralab.rundir import ADAPTER

if TYPE_CHECKING:
    from torch import nn


def refuse_unmatched_targets(model: nn.Module, targets, matched: list[str]) -> None:
    """--targets as a list: every entry must match a module (a misspelt name next to good ones would
    silently adapt, or probe, fewer layers)."""
    from loralab.adapters.inject import unmatched_entries

    unmatched = unmatched_entries(model, targets)
    if unmatched:
        raise ConfigError("{} entries " + f"{unmatched} match no module in this model (spelt right?); the "
                          f"others match {len(matched)}, e.g. {matched[:3]}.", ("targets",))


@register
class Lora(TrainingMethod):
    """LoRA (Hu et al. 2021, §4.1): W' = W + s·B·A on the targets, s = alpha/r; the classification head
    (``modules_to_save``) trains fully. The run keeps a PEFT-format adapter."""

    name = "lora"
    summary = "low-rank update ΔW = s·B·A on the targets, task head trained fully"
    saved_as = ADAPTER
    trains_adapter = True
    config_fields = ("lora", "targets")
    dora = False

    def adapter_config(self, model: nn.Module, cfg, task: str) -> ll.LoraConfig:
        from loralab import models

        lora = cfg.lora
        return ll.LoraConfig(
            r=lora.r, alpha=lora.alpha, dropout=lora.dropout, rslora=lora.rslora, dora=self.dora, init=lora.init,
            rank_pattern=lora.rank_pattern, alpha_pattern=lora.alpha_pattern,
            targets=cfg.target_spec(),  # None: the model's attention query/value (`ll.default_targets`)
            modules_to_save=models.head_names(model) if task == "classification" else [],
        )

    def prepare(self, model: nn.Module, cfg, task: str) -> nn.Module:
        adapter = self.adapter_config(model, cfg, task)
        refuse_unmatched_targets(model, adapter.targets, ll.inject(model, adapter))
        return model

    def describe(self, trained: nn.Module, cfg) -> dict:
        from loralab.adapters.registry import adapter_configs

        return {"lora": adapter_configs(trained)["default"].to_dict()}

    def save(self, trained: nn.Module, tokenizer, out: Path, write: bool = True, training=None) -> Path:
        return ll.save_adapter(trained, out / self.saved_as, write=write, training=training)

    def attach(self, model: nn.Module, cfg, saved: Path) -> nn.Module:
        ll.load_adapter(model, saved)
        return model

    def merge(self, trained: nn.Module) -> nn.Module:
        return ll.merge_and_unload(trained)


@register
class Dora(Lora):
    """DoRA (Liu et al. 2024, §4): W' = m ⊙ (W + s·B·A)/‖W + s·B·A‖_row with a trained magnitude m."""

    name = "dora"
    summary = "LoRA plus a trained magnitude vector per output (Liu et al. 2024)"
    dora = True
