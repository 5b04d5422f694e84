"""Fused autograd Functions for the common case: one active LoRA or DoRA adapter on a Linear/Conv1D.

Composing the LoRA path from autograd ops costs more than the math needs: the in-place
accumulation into the base output goes through a view (autograd then copies the whole
(tokens, out) gradient), the two input gradients are allocated separately and summed, and
DoRA saves its pre-scale activation. One node per layer does each step once. Shapes: x
(..., in), W (out, in) (a transposed view for Conv1D), b (out,) or None, A (r, in),
B (out, r), m and n (out,), T = number of tokens.

Three rules keep the rank-r products cheap on CPU (measurements: docs/results.md and
docs/adapters.md):

* every product with r in it is written as (r, ·) @ (·, ·), i.e. A·xᵀ, Bᵀ·gᵀ, (A·x)ᵀ·g,
  giving (r, T) or (r, out) results; MKL runs the (T, out)ᵀ @ (T, r) form of ∂L/∂B and
  g @ B several times slower;
* the tokens are cut into k equal slices, k = the thread count (`token_chunks`), and each
  product is one batched GEMM over the slices, so every thread works on its own slice (a
  single GEMM with r output rows splits poorly over threads). A·x is kept as (k, r, T/k)
  from the forward to the backward;
* per-row factors (s, DoRA's m/n) are folded into the (out, r) and (out, in) matrices,
  never applied to a (T, out) activation or gradient.
"""

from __future__ import annotations

import torch

from loralab.adapters.dropout import SparseDropout
from loralab.adapters.precision import autocast_off


def token_chunks(tokens: int) -> int:
    """How many equal token slices the rank-r products run as: the thread count, or the largest
    divisor of T below it (1 for a prime T)."""
    chunks = max(1, min(torch.get_num_threads(), tokens))
    while tokens % chunks:
        chunks -= 1
    return chunks


def token_slices(t2d, chunks: int):
    """(T, n) → (k, T/k, n), a view: slice i holds tokens i·T/k … (i+1)·T/k − 1."""
    return t2d.view(chunks, -1, t2d.shape[-1])


def rank_r_rows(factor, rows):
    """factor·rowsᵀ per token slice: factor (r, n), rows (k, T/k, n) → (k, r, T/k).

    A·xᵀ and Bᵀ·gᵀ as one batched product over k token slices: each thread takes a slice,
    where one (r, n) @ (n, T) GEMM with small r splits poorly over threads.
    """
    return torch.bmm(factor.expand(rows.shape[0], -1, -1), rows.transpose(1, 2))


def rank_r_grad(hidden, rows):
    """Σ over token slices of hidden·rows: hidden (k, r, T/k), rows (k, T/k, n) → (r, n).

    ∂A = s·(g·B)ᵀ·x and ∂Bᵀ = s·(A·x)ᵀ·g, contracted over tokens; batched over slices and
    then summed, for the same reason as `rank_r_rows`.
    """
    return torch.bmm(hidden, rows).sum(0)


def rank_r_term(hidden, factor):
    """hᵀ·L over all tokens, (T, n), for hidden (k, r, T/k) and L (r, n): B·(A·x) or (g·B)·A."""
    return torch.bmm(hidden.transpose(1, 2), factor.expand(hidden.shape[0], -1, -1)).view(-1, factor.shape[-1])


def slices_of_rows(rows, chunks: int):
    """(T, r) → the (k, r, T/k) layout of the rank-r products, a view."""
    return rows.view(chunks, -1, rows.shape[1]).transpose(1, 2)


def rows_of_slices(hidden):
    """(k, r, T/k) → (T, r)."""
    return hidden.transpose(1, 2).reshape(-1, hidden.shape[1])


def lora_input_product(x2d, lora_A, chunks: int, drop):
    """(A·x̃ᵀ as (k, r, T/k), the factor used): A·xᵀ, or with dropout A·(x − X_d)ᵀ/(1 − p)."""
    if drop is None:
        return rank_r_rows(lora_A, token_slices(x2d, chunks)), lora_A
    factor = lora_A * drop.keep_scale
    with drop.zeroed(x2d) as kept:
        return rank_r_rows(factor, token_slices(kept, chunks)), factor


def lora_backward_terms(g, x2d, weight_t, g_hidden, factor, drop, chunks: int, need_x: bool):
    """(∂L/∂x or None, ∂L/∂A): g·W + Gᵀ·factor and G·x̃ with G = g_hidden, the dropped entries taken
    back out of both; W's (T, in) product is skipped when the input needs no gradient.

    ∂L/∂x is written as the rank-r term first, zeroed at the drops, and the big GEMM g·W accumulated
    into it (`linear_plus_low_rank`'s order).
    """
    grad_x = None
    if need_x:
        grad_x = rank_r_term(g_hidden, factor)  # Gᵀ·factor, (T, in)
        if drop is not None:
            drop.zero_(grad_x)  # x̃ does not depend on x at the dropped entries
        grad_x.addmm_(g, weight_t.T)  # g·W
    if drop is None:
        return grad_x, rank_r_grad(g_hidden, token_slices(x2d, chunks))  # (r, in)
    with drop.zeroed(x2d) as kept:
        return grad_x, rank_r_grad(g_hidden, token_slices(kept, chunks)).mul_(drop.keep_scale)


def linear_plus_low_rank(x2d, weight, bias, hidden, lora_term):
    """x·Wᵀ + b + hᵀ·L, (T, out), for x2d (T, in), W (out, in), hidden (k, r, T/k), L (r, out).

    The rank-r term (with the bias) is written first and the big GEMM accumulates into it:
    one pass over the (T, out) output fewer than adding the rank-r term afterwards. The
    backward's input gradient g·W + (g·B)·A has the same form (x → g, W → Wᵀ, L → A).
    """
    if bias is None:
        out2d = rank_r_term(hidden, lora_term)
    else:
        terms = lora_term.expand(hidden.shape[0], -1, -1)
        out2d = torch.baddbmm(bias, hidden.transpose(1, 2), terms).view(x2d.shape[0], -1)
    return out2d.addmm_(x2d, weight.T)


class LoraLinearFunction(torch.autograd.Function):
    """z = W·x + b + s·B·(A·x̃), x̃ = dropout_p(x) (x̃ = x for p = 0; Hu et al. 2021, §4.1).

    Backward (g = ∂L/∂z, (T, out)):

        ∂L/∂B = s·gᵀ·(A·x̃)      ∂L/∂A = s·(g·B)ᵀ·x̃      ∂L/∂x = g·W + s·(g·B)·A ⊙ ∂x̃/∂x
        ∂L/∂W = gᵀ·x             ∂L/∂b = Σ_tokens g

    Saves x, the product A·x̃ᵀ ((k, r, T/k), see `token_chunks`) and, with dropout, only the
    positions of the dropped entries (`dropout.SparseDropout`); no (T, out) tensor.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, lora_A, lora_B, scaling: float, p: float = 0.0):
        x2d = x.reshape(-1, x.shape[-1])  # (T, in)
        ctx.chunks = token_chunks(x2d.shape[0])
        drop = SparseDropout.sample(x2d, p) if p > 0 else None
        hidden, _ = lora_input_product(x2d, lora_A, ctx.chunks, drop)  # A·x̃ᵀ, (k, r, T/k)
        out2d = linear_plus_low_rank(x2d, weight, bias, hidden, lora_B.T * scaling)
        ctx.scaling, ctx.p = scaling, p
        ctx.save_for_backward(x, hidden, weight, bias, lora_A, lora_B, None if drop is None else drop.packed())
        return out2d.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out):
        x, hidden, weight, bias, lora_A, lora_B, positions = ctx.saved_tensors
        s, chunks = ctx.scaling, ctx.chunks
        with autocast_off(grad_out):
            g = grad_out.reshape(-1, weight.shape[0])  # (T, out)
            x2d = x.reshape(-1, x.shape[-1])
            drop = None if positions is None else SparseDropout.unpack(positions, x2d, ctx.p)
            factor = lora_A if drop is None else lora_A * drop.keep_scale
            g_slices = token_slices(g, chunks)  # (k, T/k, out)
            g_hidden = rank_r_rows(lora_B.T * s, g_slices)  # s·(g·B)ᵀ per slice, (k, r, T/k)
            grad_x, grad_a = lora_backward_terms(g, x2d, weight.T, g_hidden, factor, drop, chunks,
                                                 ctx.needs_input_grad[0])
            grad_w = g.T @ x2d if ctx.needs_input_grad[1] else None
            grad_b = g.sum(0) if bias is not None and ctx.needs_input_grad[2] else None
            grad_bmat = rank_r_grad(hidden, g_slices).mul_(s).T  # (out, r)
        return None if grad_x is None else grad_x.view(x.shape), grad_w, grad_b, grad_a, grad_bmat, None, None


class DoraLinearFunction(torch.autograd.Function):
    """DoRA in one node (Liu et al. 2024, §4.3), dropout on the LoRA input path only:

        z = m/n ⊙ (W·x + s·B·(A·x̃)) + b,       n = ‖W + s·B·A‖_row, detached (§4.3)

    x (..., in), W (out, in), b (out,) or None, A (r, in), B (out, r), m and n (out,); x̃ = dropout_p(x).
    (PEFT also drops the input of the magnitude's rescaling of W·x, which costs a second full GEMM
    per layer; here W always sees x, and E[z] is the same.)

    Memory: autograd on the composed ops saves the pre-scale activation y = W·x + s·B·A·x̃,
    one extra (tokens, out) tensor per layer. This node saves the *output* z instead and
    recovers y/n = (z − b)/m in the backward. The next op of a transformer usually saves
    z anyway (GELU/SiLU in the MLP, the gate product, attention's q/k/v), so there the
    magnitude gradient costs no memory at all. Rows with m = 0 are recomputed exactly.
    Backward (g = ∂L/∂z, g̃ = g ⊙ m/n):

        ∂L/∂m = Σ_tokens g ⊙ y/n      ∂L/∂B = s·g̃ᵀ·(A·x̃)      ∂L/∂A = s·(g̃·B)ᵀ·x̃
        ∂L/∂x = g̃·W + s·(g̃·B)·A ⊙ ∂x̃/∂x      ∂L/∂W = g̃ᵀ·x      ∂L/∂b = Σ_tokens g

    g̃ is never formed: g̃·W = g·(m/n ⊙ W) and g̃·B = g·(m/n ⊙ B), so the backward scales an
    (out, in) copy of W instead of a (T, out) copy of g, and no (T, out) temporary is live
    at the layer's peak.

    The output must not be modified in place by later ops (autograd raises if it is).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, lora_A, lora_B, magnitude, norm, scaling: float, p: float = 0.0):
        x2d = x.reshape(-1, x.shape[-1])  # (T, in)
        col_scale = magnitude / norm  # (out,)
        ctx.chunks = token_chunks(x2d.shape[0])
        drop = SparseDropout.sample(x2d, p) if p > 0 else None
        hidden, _ = lora_input_product(x2d, lora_A, ctx.chunks, drop)  # A·x̃ᵀ, (k, r, T/k)
        # m/n is folded into the (out, in) and (out, r) factors, not applied to the output
        lora_term = (lora_B * (col_scale * scaling)[:, None]).T  # (r, out)
        out2d = linear_plus_low_rank(x2d, weight * col_scale[:, None], bias, hidden, lora_term)
        out = out2d.view(*x.shape[:-1], weight.shape[0])
        ctx.scaling, ctx.p = scaling, p
        ctx.save_for_backward(x, hidden, weight, bias, lora_A, lora_B, magnitude, norm, out,
                              None if drop is None else drop.packed())
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, hidden, weight, bias, lora_A, lora_B, magnitude, norm, out, positions = ctx.saved_tensors
        s, chunks = ctx.scaling, ctx.chunks
        with autocast_off(grad_out):
            n_out = weight.shape[0]
            g = grad_out.reshape(-1, n_out)  # (T, out)
            x2d, z = x.reshape(-1, x.shape[-1]), out.view(-1, n_out)
            drop = None if positions is None else SparseDropout.unpack(positions, x2d, ctx.p)
            factor = lora_A if drop is None else lora_A * drop.keep_scale
            g_slices = token_slices(g, chunks)  # (k, T/k, out)
            col_scale = magnitude / norm  # (out,); g̃ = g ⊙ m/n is never formed
            g_hidden = rank_r_rows((lora_B * (col_scale * s)[:, None]).T, g_slices)  # s·(g̃·B)ᵀ, (k, r, T/k)
            weight_t = (weight * col_scale[:, None]).T if ctx.needs_input_grad[0] else None
            grad_x, grad_a = lora_backward_terms(g, x2d, weight_t, g_hidden, factor, drop, chunks,
                                                 ctx.needs_input_grad[0])
            grad_w = (g.T @ x2d).mul_(col_scale[:, None]) if ctx.needs_input_grad[1] else None
            g_sum = g.sum(0) if bias is not None else None  # (out,)
            grad_b = g_sum if bias is not None and ctx.needs_input_grad[2] else None
            grad_bmat = rank_r_grad(hidden, g_slices).mul_(col_scale * s).T  # (out, r)
            grad_m = magnitude_grad(g, z, x2d, weight, bias, g_sum, lora_B, hidden, magnitude, norm, s) \
                if ctx.needs_input_grad[5] else None
        grad_x = None if grad_x is None else grad_x.view(x.shape)
        return grad_x, grad_w, grad_b, grad_a, grad_bmat, grad_m, None, None, None


def magnitude_grad(g, z, x2d, weight, bias, g_sum, lora_B, hidden, magnitude, norm, s: float):
    """∂L/∂m = Σ_t g ⊙ y/n with y/n = (z − b)/m; rows with m = 0 recompute y from x and A·x̃."""
    g_dot_z = torch.linalg.vecdot(g.T, z.T)  # Σ_t g·z, (out,)
    if bias is not None:
        g_dot_z = g_dot_z - bias * g_sum
    grad_m = g_dot_z / magnitude
    zero = (magnitude == 0).nonzero().flatten()
    if zero.numel():  # y/n cannot be recovered from z there: recompute those rows
        y = x2d @ weight[zero].T + s * rank_r_term(hidden, lora_B[zero].T)  # (T, number of zero rows)
        grad_m[zero] = torch.linalg.vecdot(g[:, zero].T, y.T) / norm[zero]
    return grad_m
