"""LoRA and DoRA: a low-rank adapter (plus DoRA's magnitude vector) and a fully trained task head."""

from __future__ import annotations

from pathlib import Path

from torch import nn

import loralab as ll
from loralab.adapters.inject import unmatched_entries
from loralab.adapters.registry import adapter_configs
from loralab.errors import ConfigError
from loralab.methods.base import TrainingMethod, register


def refuse_unmatched_targets(model: nn.Module, targets, matched: list[str]) -> None:
    """--targets as a list: every entry must match a module (a misspelt name next to good ones would
    silently adapt, or probe, fewer layers)."""
    unmatched = unmatched_entries(model, targets)
    if unmatched:
        raise ConfigError(f"--targets entries {unmatched} match no module in this model (spelt right?); the "
                          f"others match {len(matched)}, e.g. {matched[:3]}.")


@register
class Lora(TrainingMethod):
    """LoRA (Hu et al. 2021, §4.1): W' = W + s·B·A on the targets, s = alpha/r; the classification head
    (``modules_to_save``) trains fully. The run keeps a PEFT-format adapter."""

    name = "lora"
    summary = "low-rank update ΔW = s·B·A on the targets, task head trained fully"
    saved_as = "adapter"
    trains_adapter = True
    config_fields = ("r", "alpha", "dropout", "targets", "rank_pattern", "alpha_pattern", "rslora", "init")
    dora = False

    def check(self, cfg) -> None:
        """The adapter fields LoraConfig would refuse, refused now with the flag names."""
        from loralab.errors import AdapterError

        try:
            ll.LoraConfig(r=cfg.r, alpha=cfg.alpha, dropout=cfg.dropout, rank_pattern=cfg.pattern("rank_pattern"),
                          alpha_pattern=cfg.pattern("alpha_pattern"), init=cfg.init)
        except AdapterError as err:
            raise ConfigError(str(err).replace("LoraConfig.rank_pattern", "--rank-pattern")
                              .replace("LoraConfig.alpha_pattern", "--alpha-pattern")
                              .replace("LoraConfig.init", "--init")) from None

    def adapter_config(self, model: nn.Module, cfg, task: str) -> ll.LoraConfig:
        from loralab import models

        return ll.LoraConfig(
            r=cfg.r, alpha=cfg.alpha, dropout=cfg.dropout, rslora=cfg.rslora, dora=self.dora, init=cfg.init,
            rank_pattern=cfg.pattern("rank_pattern"), alpha_pattern=cfg.pattern("alpha_pattern"),
            targets=cfg.target_spec(),  # None: the model's attention query/value (`ll.default_targets`)
            modules_to_save=models.head_names(model) if task == "classification" else [],
        )

    def prepare(self, model: nn.Module, cfg, task: str) -> nn.Module:
        adapter = self.adapter_config(model, cfg, task)
        refuse_unmatched_targets(model, adapter.targets, ll.inject(model, adapter))
        return model

    def describe(self, trained: nn.Module, cfg) -> dict:
        return {"lora": adapter_configs(trained)["default"].to_dict()}

    def save(self, trained: nn.Module, tokenizer, out: Path) -> Path:
        return ll.save_adapter(trained, out / self.saved_as)

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
