"""Training telemetry: the geometry of every adapted layer, logged while the model trains.

``loralab train --analysis-every N`` adds this callback: every N optimizer steps it writes one
``{"type": "analysis", "step": ..., "layers": {path: {...}}}`` line to metrics.jsonl with, per
layer, the entropy effective rank and ‖ΔW‖_F of the update and DoRA's ΔM/ΔD (`geometry`).
For adapters the spectrum comes from the factors (an r×r SVD); ΔM/ΔD need W0 + ΔW once per
layer. For full fine-tuning, W0 is read from the base model's files (so a resumed run measures
from the pretrained weights too) and every linear layer but the head is tracked. Subspace
methods (did/said) log nothing.
"""

from __future__ import annotations

import torch

from loralab.analysis.geometry import magnitude_direction
from loralab.analysis.spectra import effective_rank
from loralab.analysis.updates import LayerUpdate, load_updates
from loralab.train.callbacks import Callback


class Telemetry(Callback):
    def __init__(self, every: int):
        self.every = every
        self.full_base: dict[str, torch.Tensor] = {}
        self.enabled = True

    def on_train_begin(self, trainer) -> None:
        """Adapters are read from the model; trainable linear weights (full FT) against W0 from the
        base model's files; anything else (a subspace wrapper) is not tracked."""
        from loralab.adapters.registry import lora_layers

        self.enabled = trainer.main
        if any(True for _ in lora_layers(trainer.model)):
            return
        tracked = self.full_updates(trainer)
        trainable = [p for p in tracked if trainer.model.get_submodule(p).weight.requires_grad]
        self.enabled = self.enabled and bool(trainable)
        self.full_base = {p: tracked[p].base for p in trainable}

    @staticmethod
    def full_updates(trainer) -> dict[str, LayerUpdate]:
        from loralab.adapters.config import LoraConfig
        from loralab.adapters.inject import match_targets
        from loralab.adapters.kinds import layer_kind, layer_shape
        from loralab.analysis.factors import base_weights

        specs = {}
        if not any(isinstance(m, torch.nn.Linear) and m.weight.requires_grad for m in trainer.model.modules()):
            return {}
        for path in match_targets(trainer.model, LoraConfig(targets="all-linear")):
            module = trainer.model.get_submodule(path)
            n_in, n_out = layer_shape(module)
            specs[path] = (layer_kind(module), (n_out, n_in))
        return {p: LayerUpdate(p, base=w) for p, w in base_weights(trainer.cfg.model, specs).items()}

    def updates(self, trainer) -> dict[str, LayerUpdate]:
        if not self.full_base:
            return load_updates(trainer.model)
        live = {}
        for path, base in self.full_base.items():
            module = trainer.model.get_submodule(path)
            weight = module.weight.detach() if module.weight.shape == base.shape else module.weight.detach().T
            live[path] = LayerUpdate(path, dense=weight.double() - base.double(), base=base)
        return live

    @torch.no_grad()
    def on_step(self, trainer, loss: float) -> None:
        if not self.enabled or trainer.state.step % self.every:
            return
        layers = {}
        for path, update in self.updates(trainer).items():
            svd = update.svd()
            layers[path] = {"effective_rank": effective_rank(svd.S), "delta_norm": float(svd.S.square().sum().sqrt()),
                            **magnitude_direction(update.base, update.tuned())}
        trainer.log.write({"type": "analysis", "step": trainer.state.step, "epoch": trainer.state.epoch + 1,
                           "layers": layers})
