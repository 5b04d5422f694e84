"""A different LoRA adapter per example of one batch, without autograd, in one pair of products.

x (batch, ..., in); A = [A_1; …; A_k] (R, in) and B = [B_1 … B_k] (out, R) stack k adapters
(R = Σ r_i); S (batch, R) holds s_i on adapter i's R-columns for the examples routed to it and 0
elsewhere. An example routed to adapter i gets W·x + b + s_i·B_i·A_i·x, one routed to none W·x + b:

    z = W·x + b + B·(S ⊙ A·x)

two thin products over the whole batch, no gather or scatter.
"""

from __future__ import annotations

import itertools

import torch


def example_scales(route: list[str], names: list[str], ranks: list[int], scalings: list[float],
                   dtype: torch.dtype, device) -> torch.Tensor:
    """S (batch, R): s_i on adapter i's columns of the stacked factors for the examples routed to i."""
    ends = list(itertools.accumulate(ranks))
    scales = torch.zeros(len(route), ends[-1], dtype=dtype)
    for name, rank, end, s in zip(names, ranks, ends, scalings):
        rows = [i for i, n in enumerate(route) if n == name]
        scales[rows, end - rank:end] = s
    return scales.to(device)


def routed_lora_inference(x, weight, bias, lora_A, lora_B, route: list[str], names: list[str], ranks: list[int],
                          scalings: list[float]) -> torch.Tensor:
    """z = W·x + b + B·(S ⊙ A·x) for x (batch, ..., in), W (out, in), A (R, in), B (out, R)."""
    batch, n_in = x.shape[0], x.shape[-1]
    x2d = x.reshape(-1, n_in)  # (T, in), the examples' tokens in order
    hidden = torch.mm(x2d, lora_A.T)  # (T, R)
    scales = example_scales(route, names, ranks, scalings, hidden.dtype, x.device)
    hidden.view(batch, -1, hidden.shape[1]).mul_(scales[:, None, :])
    out = torch.mm(hidden, lora_B.T) if bias is None else torch.addmm(bias, hidden, lora_B.T)  # (T, out)
    return out.addmm_(x2d, weight.T).view(*x.shape[:-1], weight.shape[0])
