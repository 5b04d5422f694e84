"""The LoRA products, written once, and the fused autograd node for one active LoRA adapter.

Shapes: x (..., in), x2d (T, in) its tokens, W (out, in) (a transposed view for Conv1D), b (out,) or
None, A (r, in), B (out, r), s the scale. The output formula of LoRA (Hu et al. 2021, §4.1),

    z = W·x + b + s·B·(A·x̃),     x̃ = dropout_p(x),

is `lora_output` — the training node and the no-gradient path both call it. Three rules keep the
rank-r products cheap on CPU (measurements: docs/results.md):

* every product with r in it is written as (r, ·) @ (·, ·) — A·xᵀ, Bᵀ·gᵀ, (A·x)ᵀ·g — giving (r, T)
  or (r, out) results; MKL runs the (T, out)ᵀ @ (T, r) form of ∂L/∂B and g @ B several times slower;
* the tokens are cut into k equal slices (`token_chunks`: a function of T alone, so the bits do not
  depend on the thread count) and each rank-r product is one batched GEMM over the slices, which splits
  over threads where one GEMM with r output rows does not. A·x is kept as (k, r, T/k);
* per-row factors (s, DoRA's m/n) are folded into the (out, r) and (out, in) matrices, never applied to
  a (T, out) activation or gradient.

Nothing here writes into a tensor it did not create: dropout works on a copy of x with the dropped
entries zeroed (`dropout.SparseDropout.kept`). Under ``create_graph=True`` the backward differentiates
the formula itself (`formula_backward`), so higher derivatives are exact.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from loralab.adapters.dropout import SparseDropout, sample_dropout, unpack_dropout
from loralab.adapters.precision import autocast_off

MAX_CHUNKS = 8


def token_chunks(tokens: int) -> int:
    """How many equal token slices the rank-r products run as: the largest divisor of T up to
    `MAX_CHUNKS` (1 for a prime T). Independent of the thread count, so results are too."""
    chunks = max(1, min(MAX_CHUNKS, tokens))
    while tokens % chunks:
        chunks -= 1
    return chunks


def token_slices(t2d, chunks: int):
    """(T, n) → (k, T/k, n), a view: slice i holds tokens i·T/k … (i+1)·T/k − 1."""
    return t2d.view(chunks, -1, t2d.shape[-1])


def rank_r_rows(factor, rows):
    """factor·rowsᵀ per token slice: factor (r, n), rows (k, T/k, n) → (k, r, T/k)."""
    return torch.bmm(factor.expand(rows.shape[0], -1, -1), rows.transpose(1, 2))


def rank_r_grad(hidden, rows):
    """Σ over token slices of hidden·rows: hidden (k, r, T/k), rows (k, T/k, n) → (r, n).

    ∂A = s·(g·B)ᵀ·x and ∂Bᵀ = s·(A·x)ᵀ·g, contracted over tokens, batched over slices then summed.
    """
    return torch.bmm(hidden, rows).sum(0)


def rank_r_term(hidden, factor):
    """hᵀ·L over all tokens, (T, n), for hidden (k, r, T/k) and L (r, n): B·(A·x) or (g·B)·A."""
    return torch.bmm(hidden.transpose(1, 2), factor.expand(hidden.shape[0], -1, -1)).view(-1, factor.shape[-1])


def lora_hidden(x2d, lora_A, drop: Optional[SparseDropout] = None):
    """A·x̃ᵀ as (k, r, T/k): A·xᵀ, or with dropout A·(x − X_d)ᵀ/(1 − p) on a zeroed copy of x."""
    chunks = token_chunks(x2d.shape[0])
    if drop is None:
        return rank_r_rows(lora_A, token_slices(x2d, chunks))
    return rank_r_rows(lora_A * drop.keep_scale, token_slices(drop.kept(x2d), chunks))


def linear_plus_low_rank(x2d, weight, bias, hidden, lora_term):
    """x·Wᵀ + b + hᵀ·L, (T, out), for x2d (T, in), W (out, in), hidden (k, r, T/k), L (r, out).

    The rank-r term (with the bias) is written first and the big GEMM accumulates into it: one pass
    over the (T, out) output fewer than adding the rank-r term afterwards.
    """
    if bias is None:
        out2d = rank_r_term(hidden, lora_term)
    else:
        terms = lora_term.expand(hidden.shape[0], -1, -1)
        out2d = torch.baddbmm(bias, hidden.transpose(1, 2), terms).view(x2d.shape[0], -1)
    return out2d.addmm_(x2d, weight.T)


def lora_output(x2d, weight, bias, hidden, lora_B, scaling: float):
    """LoRA's output z = W·x + b + s·B·(A·x̃), (T, out), from hidden = A·x̃ᵀ (k, r, T/k)."""
    return linear_plus_low_rank(x2d, weight, bias, hidden, lora_B.T * scaling)


def lora_inference(x, weight, bias, lora_A, lora_B, scaling: float) -> torch.Tensor:
    """`lora_output` without autograd (``no_grad`` / ``inference_mode``, no dropout)."""
    x2d = x.reshape(-1, x.shape[-1])
    out2d = lora_output(x2d, weight, bias, lora_hidden(x2d, lora_A), lora_B, scaling)
    return out2d.view(*x.shape[:-1], weight.shape[0])


def input_gradient(g, weight_t, g_hidden, factor, drop: Optional[SparseDropout]):
    """∂L/∂x = g·W + Gᵀ·factor ⊙ ∂x̃/∂x, (T, in), with G = g_hidden (k, r, T/k): the rank-r term is
    written first (into a new tensor), zeroed at the drops, and the big GEMM accumulates into it."""
    grad_x = rank_r_term(g_hidden, factor)  # Gᵀ·factor, (T, in)
    if drop is not None:
        drop.zero_(grad_x)  # x̃ does not depend on x at the dropped entries
    return grad_x.addmm_(g, weight_t.T)  # + g·W


def a_gradient(g_hidden, x2d, drop: Optional[SparseDropout]):
    """∂L/∂A = G·x̃, (r, in): G·x, or G·(x − X_d)/(1 − p) on a zeroed copy of x."""
    chunks = g_hidden.shape[0]
    if drop is None:
        return rank_r_grad(g_hidden, token_slices(x2d, chunks))
    return rank_r_grad(g_hidden, token_slices(drop.kept(x2d), chunks)).mul_(drop.keep_scale)


def formula_backward(formula: Callable, inputs: tuple, needs: tuple, grad_out: torch.Tensor) -> list:
    """The gradients of ``formula(*inputs)`` (composed from differentiable ops) against ``grad_out``, with
    the graph kept (``create_graph``): a fused node's backward under double backward."""
    wanted = [t for t, need in zip(inputs, needs) if need]
    with torch.enable_grad():
        out = formula(*inputs)
        grads = iter(torch.autograd.grad(out, wanted, grad_out, create_graph=True, allow_unused=True))
    return [next(grads) if need else None for need in needs]


def lora_formula(x, weight, bias, lora_A, lora_B, keep, scaling: float):
    """LoRA from differentiable ops, the dropout mask ``keep`` (x's shape, already divided by 1 − p, or None)."""
    dropped = x if keep is None else x * keep
    out = x @ weight.T + scaling * ((dropped @ lora_A.T) @ lora_B.T)
    return out if bias is None else out + bias


class LoraLinearFunction(torch.autograd.Function):
    """z = W·x + b + s·B·(A·x̃), x̃ = dropout_p(x) (x̃ = x for p = 0; Hu et al. 2021, §4.1).

    Backward (g = ∂L/∂z, (T, out)):

        ∂L/∂B = s·gᵀ·(A·x̃)      ∂L/∂A = s·(g·B)ᵀ·x̃      ∂L/∂x = g·W + s·(g·B)·A ⊙ ∂x̃/∂x
        ∂L/∂W = gᵀ·x             ∂L/∂b = Σ_tokens g

    Saves x, the product A·x̃ᵀ ((k, r, T/k), see `token_chunks`) and, with dropout, only the positions
    of the dropped entries (`dropout.SparseDropout`); no (T, out) tensor.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, lora_A, lora_B, scaling: float, p: float = 0.0):
        x2d = x.reshape(-1, x.shape[-1])  # (T, in)
        drop = sample_dropout(x2d, p)
        hidden = lora_hidden(x2d, lora_A, drop)  # A·x̃ᵀ, (k, r, T/k)
        out2d = lora_output(x2d, weight, bias, hidden, lora_B, scaling)
        ctx.scaling, ctx.p = scaling, p
        ctx.save_for_backward(x, hidden, weight, bias, lora_A, lora_B, None if drop is None else drop.packed())
        return out2d.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out):
        x, hidden, weight, bias, lora_A, lora_B, positions = ctx.saved_tensors
        s = ctx.scaling
        drop = unpack_dropout(positions, x.reshape(-1, x.shape[-1]), ctx.p)
        if torch.is_grad_enabled():  # create_graph: differentiate the formula, so second derivatives are right
            keep = None if drop is None else drop.keep_mask(x)
            grads = formula_backward(lambda *t: lora_formula(*t, keep, s), (x, weight, bias, lora_A, lora_B),
                                     ctx.needs_input_grad[:5], grad_out)
            return (*grads, None, None)
        with autocast_off(grad_out):
            g = grad_out.reshape(-1, weight.shape[0])  # (T, out)
            x2d = x.reshape(-1, x.shape[-1])
            g_slices = token_slices(g, hidden.shape[0])  # (k, T/k, out)
            g_hidden = rank_r_rows(lora_B.T * s, g_slices)  # s·(g·B)ᵀ per slice, (k, r, T/k)
            factor = lora_A if drop is None else lora_A * drop.keep_scale
            grad_x = input_gradient(g, weight.T, g_hidden, factor, drop) if ctx.needs_input_grad[0] else None
            grad_a = a_gradient(g_hidden, x2d, drop)
            grad_w = g.T @ x2d if ctx.needs_input_grad[1] else None
            grad_b = g.sum(0) if bias is not None and ctx.needs_input_grad[2] else None
            grad_bmat = rank_r_grad(hidden, g_slices).mul_(s).T  # (out, r)
        return None if grad_x is None else grad_x.view(x.shape), grad_w, grad_b, grad_a, grad_bmat, None, None
