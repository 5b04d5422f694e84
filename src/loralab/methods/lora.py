"""LoRA and DoRA: a low-rank adapter (plus DoRA's magnitude vector) and a fully trained task head."""

from __future__ import annotations

from pathlib import Path

from torch import nn

import loralab as ll
from loralab.adapters.lora import layer_kind
from loralab.adapters.registry import adapter_configs
from loralab.errors import ConfigError
from loralab.methods.base import TrainingMethod, register

# The attention query/value projections by architecture family (leaf module names), tried in order when
# --targets is not given; a fused q/k/v projection stands for both.
DEFAULT_TARGETS = (
    ("query", "value"),            # BERT, RoBERTa, XLM-R, ELECTRA, ALBERT
    ("q_proj", "v_proj"),          # Llama, Mistral, Qwen2, Gemma, Phi, OPT, BART
    ("q_lin", "v_lin"),            # DistilBERT
    ("query_proj", "value_proj"),  # DeBERTa-v2/v3
    ("q", "v"),                    # T5, MPNet
    ("c_attn",),                   # GPT-2, GPT-BigCode
    ("query_key_value",),          # BLOOM, GPT-NeoX, Falcon
    ("qkv_proj",),                 # Phi-3, CodeGen
    ("Wqkv",),                     # MPT, ModernBERT
    ("in_proj",),                  # DeBERTa (v1)
)


def default_targets(model: nn.Module) -> list[str]:
    """The attention query/value projections of ``model``: the first family of DEFAULT_TARGETS whose
    names are all Linear (or GPT-2 Conv1D) layers in it."""
    leaf_names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                  if layer_kind(module) in ("linear", "conv1d")}
    for family in DEFAULT_TARGETS:
        if set(family) <= leaf_names:
            return list(family)
    known = ", ".join("/".join(family) for family in DEFAULT_TARGETS)
    raise ConfigError(f"this model has none of the attention projections loralab knows ({known}); name the "
                      "layers to adapt with --targets (e.g. --targets all-linear, or module names as print(model) "
                      "shows them).")


@register
class Lora(TrainingMethod):
    """LoRA (Hu et al. 2021, §4.1): W' = W + s·B·A on the targets, s = alpha/r; the classification head
    (``modules_to_save``) trains fully. The run keeps a PEFT-format adapter."""

    name = "lora"
    summary = "low-rank update ΔW = s·B·A on the targets, task head trained fully"
    saved_as = "adapter"
    dora = False

    def check(self, cfg) -> None:
        """The adapter fields LoraConfig would refuse, refused now with the flag names."""
        from loralab.errors import AdapterError

        try:
            ll.LoraConfig(r=cfg.r, alpha=cfg.alpha, dropout=cfg.dropout, rank_pattern=cfg.pattern("rank_pattern"),
                          alpha_pattern=cfg.pattern("alpha_pattern"))
        except AdapterError as err:
            raise ConfigError(str(err).replace("LoraConfig.rank_pattern", "--rank-pattern")
                              .replace("LoraConfig.alpha_pattern", "--alpha-pattern")) from None

    def adapter_config(self, model: nn.Module, cfg, task: str) -> ll.LoraConfig:
        from loralab import models

        return ll.LoraConfig(
            r=cfg.r, alpha=cfg.alpha, dropout=cfg.dropout, rslora=cfg.rslora, dora=self.dora,
            rank_pattern=cfg.pattern("rank_pattern"), alpha_pattern=cfg.pattern("alpha_pattern"),
            targets=cfg.target_spec() or default_targets(model),
            modules_to_save=models.head_names(model) if task == "classification" else [],
        )

    def prepare(self, model: nn.Module, cfg, task: str) -> nn.Module:
        ll.inject(model, self.adapter_config(model, cfg, task))
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
