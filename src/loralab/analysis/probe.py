"""The rank probe: predict the rank a task needs from the pretrained model, before any training.

At the pretrained weights, on N batches of the task's training data:

1. (classification) the new head is fitted on frozen features first, so the gradients below
   carry the task's signal and not a random head's;
2. every target layer's weight gradient G_b (out, in) is taken on each batch b, and its input
   activations X_b (tokens, in) are kept as a Gram matrix.

Per layer, three predictors of the rank, each the rank reaching ``energy`` (90%) of its spectrum:

* ``gradient``: the summed gradient G = Σ_b G_b — how many directions the first full-batch step
  would move the layer in (the direction LoRA-GA-style initialisations align A and B with);
* ``gradient_covariance``: the input-side second moment Σ_b G_bᵀ·G_b (in × in), i.e. the singular
  values of the stacked gradients [G_1; …; G_N] — how many input directions the gradients
  occupy across batches (a K-FAC-like factor of the gradient covariance);
* ``activation``: EVA-style (Paischer et al. 2024) explained variance of the layer's inputs,
  Σ_b X_bᵀ·X_b — how many input directions the data uses at all (labels not needed).

The task's predicted rank is the median over layers of each. Cost: N forward passes for the head
and N forward + backward passes, against an epoch of n_train / batch_size steps.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from loralab.analysis.spectra import energy_rank


class LayerStats:
    """Per-layer accumulators: the gradient sum, the stacked gradients' Gram, the input Gram."""

    def __init__(self, module: nn.Module, kind: str):
        self.module, self.kind = module, kind
        self.grad_sum: Optional[torch.Tensor] = None
        self.grad_gram: Optional[torch.Tensor] = None
        self.input_gram: Optional[torch.Tensor] = None
        self.mask: Optional[torch.Tensor] = None
        self.handle = module.register_forward_hook(self.record_input)

    def weight_grad(self) -> torch.Tensor:
        """∂L/∂W as (out, in) (Conv1D stores W as (in, out))."""
        g = self.module.weight.grad.double()
        return g if self.kind == "linear" else g.T

    def record_input(self, module, args, output) -> None:
        x = args[0].detach().double()
        x = x[self.mask] if self.mask is not None and x.dim() == 3 else x.reshape(-1, x.shape[-1])
        gram = x.T @ x
        self.input_gram = gram if self.input_gram is None else self.input_gram + gram

    def add_gradient(self) -> None:
        g = self.weight_grad()
        self.grad_sum = g.clone() if self.grad_sum is None else self.grad_sum + g
        gram = g.T @ g
        self.grad_gram = gram if self.grad_gram is None else self.grad_gram + gram

    def ranks(self, energy: float) -> dict:
        """Rank at ``energy`` for each predictor, from singular values (Gram eigenvalues are σ²)."""
        def from_gram(gram):
            return torch.linalg.eigvalsh(gram).flip(0).clamp_min(0).sqrt()

        from loralab.analysis.rank_predictors import effective_rank

        return {"gradient_effective_rank": effective_rank(self.grad_sum),
                "gradient": energy_rank(torch.linalg.svdvals(self.grad_sum), energy),
                "gradient_covariance": energy_rank(from_gram(self.grad_gram), energy),
                "activation": energy_rank(from_gram(self.input_gram), energy)}


def pooled_positions(model: nn.Module, batch: dict) -> torch.Tensor:
    """(B,) index of the token a decoder's sequence-classification head reads: the last one that is
    not padding (``input_ids != config.pad_token_id``), the rule of HF's ``*ForSequenceClassification``."""
    not_pad = batch["input_ids"] != model.config.pad_token_id
    positions = torch.arange(not_pad.shape[1], device=not_pad.device)
    return (positions * not_pad).argmax(-1)


def allocate_ranks(layer_scores: dict[str, float], budget: int, minimum: int = 1) -> dict[str, int]:
    """Per-layer ranks proportional to ``layer_scores`` that sum to ``budget`` (each ≥ ``minimum``).

    Largest-remainder rounding, so the total is exact; used to compare a probe-allocated rank
    pattern with a uniform rank at the same number of rank units (e.g. budget = 8 × layers).
    """
    names = list(layer_scores)
    spare = budget - minimum * len(names)
    if spare < 0:
        raise ValueError(f"a budget of {budget} cannot give {len(names)} layers rank ≥ {minimum}")
    total = sum(max(layer_scores[n], 0.0) for n in names) or 1.0
    shares = {n: spare * max(layer_scores[n], 0.0) / total for n in names}
    ranks = {n: minimum + int(shares[n]) for n in names}
    leftover = budget - sum(ranks.values())
    for n in sorted(names, key=lambda k: shares[k] - int(shares[k]), reverse=True)[:leftover]:
        ranks[n] += 1
    return ranks
