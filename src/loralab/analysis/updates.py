"""Per-layer weight updates of any kind — LoRA factors, DoRA, or full fine-tuning's W_ft − W0.

    updates = load_updates("runs/lora-r8")            # a run, an adapter directory, or a live model
    for path, u in updates.items():
        u.svd()      # from the factors for LoRA (no out×in product), dense otherwise

Every measurement of `loralab.analysis` takes `LayerUpdate`s, so it works the same on loralab's
adapters, PEFT's adapters and full fine-tuning runs. A LoRA update needs no base weights for
its spectrum; DoRA's real change, amplification and intruder dimensions read W0 through
`factors.base_weights`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from loralab.analysis.factors import Factors, base_weights, delta_weight, factors, layer_specs
from loralab.analysis.spectra import SVD, dense_svd, low_rank_svd
from loralab.errors import AdapterError
from loralab.rundir import MODEL, RunDir


@dataclass
class LayerUpdate:
    """One layer's change: ``factors`` (an adapter), or ``dense`` ΔW (full FT); ``base`` is W0 (out, in)."""

    path: str
    factors: Optional[Factors] = None
    dense: Optional[torch.Tensor] = None
    base: Optional[torch.Tensor] = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.factors.shape if self.factors is not None else tuple(self.dense.shape)

    @property
    def low_rank(self) -> bool:
        """True when ΔW = s·B·A exactly (a LoRA adapter, not DoRA)."""
        return self.factors is not None and self.factors.magnitude is None

    def delta(self) -> torch.Tensor:
        """ΔW (out, in), float64 (dense: use only where the out×in matrix is needed)."""
        if self.dense is not None:
            return self.dense.double()
        return delta_weight(self.factors, self.base)

    def svd(self) -> SVD:
        """ΔW's SVD; for DoRA without its base, the SVD of the low-rank part s·B·A (the direction's update)."""
        if self.low_rank or (self.factors is not None and self.base is None):
            return low_rank_svd(self.factors.A, self.factors.B, self.factors.scale)
        return dense_svd(self.delta())

    def tuned(self) -> torch.Tensor:
        """W0 + ΔW (out, in), float64; needs ``base``."""
        if self.base is None:
            raise AdapterError(f"{self.path}: the base weight W0 is needed here; pass the base model.")
        return self.base.double() + self.delta()


def load_updates(source: Union[str, os.PathLike, nn.Module], model: Optional[str] = None, with_base: bool = True,
                 name: str = "default") -> dict[str, LayerUpdate]:
    """{module path: LayerUpdate} of a run directory, an adapter directory or a live adapted model.

    Args:
        source: `loralab train` run (lora, dora or full), PEFT-format adapter directory, HF model
            directory (a tuned or merged model: ΔW = its weights − the base's), or a model with adapter
            ``name`` injected.
        model: The base model (name or directory) for base weights; default: the run's model or the
            adapter's ``base_model_name_or_path`` (required for a model directory).
        with_base: Read W0 for every layer (needed for DoRA, amplification, intruders, ΔM/ΔD).
    """
    if isinstance(source, nn.Module):
        fs = factors(source, name)
        bases = base_weights(source, layer_specs(fs)) if with_base else {}
        return {p: LayerUpdate(p, factors=f, base=bases.get(p)) for p, f in fs.items()}
    root, run = Path(source), RunDir(source)
    if run.is_run() and run.finished():
        config = run.config()
        if run.adapter() is not None:  # what the run saved decides: an adapter, or a whole tuned model
            return load_updates(run.adapter(), model or config["model"], with_base)
        if run.artefact(MODEL).is_dir():
            return full_updates(run.artefact(MODEL), model or config["model"])
        raise AdapterError(f"{root} is a {config['method']} run, which keeps neither adapter/ nor model/; analysis "
                           f"reads adapters and fully tuned models. Merge it first: `loralab merge {root} --out DIR`, "
                           f"then analyze DIR with --model {config['model']}.")
    if (root / "config.json").exists() and not (root / "adapter_config.json").exists():
        if model is None:
            raise AdapterError(f"{root} is a model directory (a fully tuned or merged model); its update is measured "
                               "against the base it was tuned from: pass that base (--model, e.g. minilm).")
        return full_updates(root, model)
    fs = factors(root)
    needs_base = with_base or any(f.magnitude is not None for f in fs.values())
    base_source = model or json.loads((root / "adapter_config.json").read_text()).get("base_model_name_or_path")
    # an adapter saved from a model built in code names no base: what the factors alone give is measured
    bases = base_weights(base_source, layer_specs(fs)) if needs_base and base_source else {}
    return {p: LayerUpdate(p, factors=f, base=bases.get(p)) for p, f in fs.items()}


def full_updates(tuned_dir: Union[str, os.PathLike], base_model: str, targets="all-linear") -> dict[str, LayerUpdate]:
    """ΔW = W_ft − W0 for every layer ``targets`` matches (default: all linear layers but the head) that
    changed: a merged adapter leaves the layers it did not adapt bit-identical, and those zeros would
    dominate every median.

    The module names come from a weightless (meta-device) copy of the tuned model's architecture; only
    the matched weights are read, from both models' safetensors files.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    from loralab.adapters.config import LoraConfig
    from loralab.adapters.inject import match_targets
    from loralab.adapters.kinds import layer_kind, layer_shape

    config = AutoConfig.from_pretrained(tuned_dir)
    heads = {"ForSequenceClassification": AutoModelForSequenceClassification, "ForCausalLM": AutoModelForCausalLM}
    builder = next((b for key, b in heads.items() if any(key in a for a in config.architectures or [])), AutoModel)
    with torch.device("meta"):
        skeleton = builder.from_config(config)
    specs = {}
    for path in match_targets(skeleton, LoraConfig(targets=targets)):
        module = skeleton.get_submodule(path)
        n_in, n_out = layer_shape(module)
        specs[path] = (layer_kind(module), (n_out, n_in))
    tuned, base = base_weights(str(tuned_dir), specs), base_weights(base_model, specs)
    changed = [p for p in specs if not torch.equal(tuned[p], base[p])]
    if not changed:
        raise AdapterError(f"{tuned_dir} equals {base_model} in every linear layer: there is no update to measure. "
                           "Is --model the model it was tuned from, and did it train?")
    return {p: LayerUpdate(p, dense=tuned[p].double() - base[p].double(), base=base[p]) for p in changed}
