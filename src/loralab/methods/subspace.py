"""DID and SAID: every weight moves inside a random d-dimensional subspace (Aghajanyan et al. 2021)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from loralab.errors import ConfigError
from loralab.methods.base import TrainingMethod, register
from loralab.rundir import INTRINSIC

if TYPE_CHECKING:
    from torch import nn


@register
class DirectIntrinsic(TrainingMethod):
    """DID (Li et al. 2018; Aghajanyan et al. 2021, §3): θ = θ0 + P·θ_d, P a seeded random projection.
    The run keeps θ_d and what rebuilds P (`IntrinsicModel.save`)."""

    name = "did"
    summary = "θ = θ0 + P·θ_d, only θ_d (d values) trains"
    saved_as = INTRINSIC
    config_fields = ("subspace", "targets")
    said = False

    def check(self, cfg) -> None:
        if cfg.gradient_checkpointing:  # the weights are rebuilt from θ_d in each forward, outside the blocks
            raise ConfigError("{} works with full, lora and dora, not with {} " + self.name + "; train without it (or "
                              "lower {} / {} to save memory).", ("gradient_checkpointing", "method", "batch_size",
                                                                  "max_length"))
        if cfg.fsdp:  # the subspace model rebuilds every weight from θ_d: nothing to shard
            raise ConfigError("{} shards the weights of full, lora and dora; {} " + self.name + " trains d values.",
                              ("fsdp", "method"))

    def prepare(self, model: nn.Module, cfg, task: str) -> nn.Module:
        from loralab.subspace.intrinsic import IntrinsicModel

        return IntrinsicModel(model, cfg.subspace.d, cfg.subspace.projection, said=self.said, targets=cfg.target_spec(),
                              seed=cfg.seed)

    def describe(self, trained: nn.Module, cfg) -> dict:
        return {"subspace": {"d": cfg.subspace.d, "projection": cfg.subspace.projection, "full_dim": trained.full_dim}}

    def save(self, trained: nn.Module, tokenizer, out: Path, write: bool = True, training=None) -> Path:
        from loralab import models

        if not write:
            return out / self.saved_as
        heads = [n for n, _ in trained.model.named_parameters() if n.split(".")[0] in models.head_names(trained.model)]
        return trained.save(out / self.saved_as, extra_theta0=heads)

    def attach(self, model: nn.Module, cfg, saved: Path) -> nn.Module:
        from loralab.subspace.intrinsic import IntrinsicModel

        return IntrinsicModel.load(model, saved)

    def merge(self, trained: nn.Module) -> nn.Module:
        return trained.merge_into_model()


@register
class StructureAwareIntrinsic(DirectIntrinsic):
    """SAID (Aghajanyan et al. 2021, §3): θ_i = θ0_i + λ_i·(P·θ_{d−m})_i, one scale λ_i per tensor."""

    name = "said"
    summary = "DID plus one trainable scale per weight tensor (counted in d)"
    said = True
