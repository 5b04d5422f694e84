"""Fused autograd nodes for the common case: one active LoRA or DoRA adapter on a Linear/Conv1D.

Composing the LoRA path from autograd ops costs more than the math needs: the in-place
accumulation into the base output goes through a view (autograd then copies the whole
(tokens, out) gradient), the two input gradients are allocated separately and summed, and
DoRA saves its pre-scale activation. One node per layer does each step once. Shapes: x
(..., in), W (out, in) (a transposed view for Conv1D), b (out,) or None, A (r, in),
B (out, r), m and n (out,), T = number of tokens.

Two rules keep the rank-r products cheap on CPU (measured with MKL, T = 2048, r = 8):

* every product with r in it is written as (r, ·) @ (·, ·), i.e. A·xᵀ, Bᵀ·gᵀ, (A·x)ᵀ·g,
  giving (r, T) or (r, out) results. The (T, out)ᵀ @ (T, r) form of ∂L/∂B ran 3-5x slower
  (3.9 ms against 1.1 ms for out = 1536), and g @ B about 2x slower than Bᵀ @ gᵀ;
* per-row factors (s, DoRA's m/n) are folded into the (out, r) and (out, in) matrices,
  never applied to a (T, out) activation or gradient.
"""

from __future__ import annotations

import torch


def linear_plus_low_rank(x2d, weight, bias, hidden_t, lora_term):
    """x·Wᵀ + b + hᵀ·L, (T, out), for x2d (T, in), W (out, in), hidden_t (r, T), L (r, out).

    The rank-r term (with the bias) is written first and the big GEMM accumulates into it:
    one pass over the (T, out) output fewer than adding the rank-r term afterwards. The
    backward's input gradient g·W + (g·B)·A has the same form (x → g, W → Wᵀ, L → A).
    """
    out2d = hidden_t.T @ lora_term if bias is None else torch.addmm(bias, hidden_t.T, lora_term)
    return out2d.addmm_(x2d, weight.T)


class LoraLinear(torch.autograd.Function):
    """z = W·x + b + s·B·(A·x̃), x̃ = dropout(x) (x̃ is x when dropout is off; Hu et al. 2021, §4.1).

    Backward (g = ∂L/∂z, (T, out)):

        ∂L/∂B = s·gᵀ·(A·x̃)      ∂L/∂A = s·(g·B)ᵀ·x̃      ∂L/∂x = g·W  (+ s·(g·B)·A when x̃ is x)
        ∂L/∂x̃ = s·(g·B)·A        ∂L/∂W = gᵀ·x            ∂L/∂b = Σ_tokens g

    Saves x, x̃ and the (r, T) product A·x̃ᵀ; no (T, out) tensor.
    """

    @staticmethod
    def forward(ctx, x, dropped, weight, bias, lora_A, lora_B, scaling: float):
        x2d = x.reshape(-1, x.shape[-1])  # (T, in)
        lora_in = x2d if dropped is None else dropped.reshape(-1, x.shape[-1])
        hidden_t = lora_A @ lora_in.T  # (r, T)
        out2d = linear_plus_low_rank(x2d, weight, bias, hidden_t, lora_B.T * scaling)
        out = out2d.view(*x.shape[:-1], weight.shape[0])
        ctx.scaling = scaling
        ctx.save_for_backward(x, dropped, hidden_t, weight, bias, lora_A, lora_B)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, dropped, hidden_t, weight, bias, lora_A, lora_B = ctx.saved_tensors
        s = ctx.scaling
        g = grad_out.reshape(-1, weight.shape[0])  # (T, out)
        x2d = x.reshape(-1, x.shape[-1])
        lora_in = x2d if dropped is None else dropped.reshape(-1, x.shape[-1])
        g_hidden_t = (lora_B.T @ g.T).mul_(s)  # (r, T)
        grad_x = grad_dropped = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:  # (T, in)
            grad_x = g @ weight if dropped is not None else linear_plus_low_rank(g, weight.T, None, g_hidden_t, lora_A)
            grad_x = grad_x.view(x.shape)
        if dropped is not None and ctx.needs_input_grad[1]:
            grad_dropped = (g_hidden_t.T @ lora_A).view(x.shape)
        if ctx.needs_input_grad[2]:
            grad_w = g.T @ x2d
        if bias is not None and ctx.needs_input_grad[3]:
            grad_b = g.sum(0)
        grad_a = g_hidden_t @ lora_in  # (r, in)
        grad_bmat = (hidden_t @ g).mul_(s).T  # (out, r)
        return grad_x, grad_dropped, grad_w, grad_b, grad_a, grad_bmat, None


class DoraLinear(torch.autograd.Function):
    """DoRA in one node (Liu et al. 2024, §4.3; dropout inactive):

        z = m/n ⊙ (W·x + s·B·(A·x)) + b,       n = ‖W + s·B·A‖_row, detached (§4.3)

    x (..., in), W (out, in), b (out,) or None, A (r, in), B (out, r), m and n (out,).

    Memory: autograd on the composed ops saves the pre-scale activation y = W·x + s·B·A·x,
    one extra (tokens, out) tensor per layer. This node saves the *output* z instead and
    recovers y/n = (z − b)/m in the backward. The next op of a transformer usually saves
    z anyway (GELU/SiLU in the MLP, the gate product, attention's q/k/v), so there the
    magnitude gradient costs no memory at all. Rows with m = 0 are recomputed exactly.
    Backward (g = ∂L/∂z, g̃ = g ⊙ m/n):

        ∂L/∂m = Σ_tokens g ⊙ y/n      ∂L/∂B = s·g̃ᵀ·(A·x)      ∂L/∂A = s·(g̃·B)ᵀ·x
        ∂L/∂x = g̃·W + s·(g̃·B)·A      ∂L/∂W = g̃ᵀ·x            ∂L/∂b = Σ_tokens g

    g̃ is never formed: g̃·W = g·(m/n ⊙ W) and g̃·B = g·(m/n ⊙ B), so the backward scales an
    (out, in) copy of W instead of a (T, out) copy of g, and no (T, out) temporary is live
    at the layer's peak.

    The output must not be modified in place by later ops (autograd raises if it is).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, lora_A, lora_B, magnitude, norm, scaling: float):
        x2d = x.reshape(-1, x.shape[-1])  # (T, in)
        col_scale = magnitude / norm  # (out,)
        hidden_t = lora_A @ x2d.T  # (r, T)
        # m/n is folded into the (out, in) and (out, r) factors, not applied to the output
        lora_term = (lora_B * (col_scale * scaling)[:, None]).T  # (r, out)
        out2d = linear_plus_low_rank(x2d, weight * col_scale[:, None], bias, hidden_t, lora_term)
        out = out2d.view(*x.shape[:-1], weight.shape[0])
        ctx.scaling = scaling
        ctx.save_for_backward(x, hidden_t, weight, bias, lora_A, lora_B, magnitude, norm, out)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, hidden_t, weight, bias, lora_A, lora_B, magnitude, norm, out = ctx.saved_tensors
        s = ctx.scaling
        n_out = weight.shape[0]
        g = grad_out.reshape(-1, n_out)  # (T, out)
        x2d, z = x.reshape(-1, x.shape[-1]), out.view(-1, n_out)
        col_scale = magnitude / norm  # (out,); g̃ = g ⊙ m/n is never formed
        g_hidden_t = (lora_B * (col_scale * s)[:, None]).T @ g.T  # s·(g̃·B)ᵀ, (r, T)
        grad_x = grad_w = grad_b = grad_m = None
        if ctx.needs_input_grad[0]:
            scaled_weight_t = (weight * col_scale[:, None]).T
            grad_x = linear_plus_low_rank(g, scaled_weight_t, None, g_hidden_t, lora_A).view(x.shape)
        if ctx.needs_input_grad[1]:
            grad_w = (g.T @ x2d).mul_(col_scale[:, None])
        g_sum = g.sum(0) if bias is not None else None  # (out,)
        if bias is not None and ctx.needs_input_grad[2]:
            grad_b = g_sum
        grad_a = g_hidden_t @ x2d  # (r, in)
        grad_bmat = (hidden_t @ g).mul_(col_scale * s).T  # (out, r)
        if ctx.needs_input_grad[5]:
            g_dot_z = torch.linalg.vecdot(g.T, z.T)  # Σ_t g·z, (out,)
            if bias is not None:
                g_dot_z = g_dot_z - bias * g_sum
            grad_m = g_dot_z / magnitude
            zero = (magnitude == 0).nonzero().flatten()
            if zero.numel():  # y/n cannot be recovered from z there: recompute those rows
                y = x2d @ weight[zero].T + s * (hidden_t.T @ lora_B[zero].T)  # (T, k)
                grad_m[zero] = torch.linalg.vecdot(g[:, zero].T, y.T) / norm[zero]
        return grad_x, grad_w, grad_b, grad_a, grad_bmat, grad_m, None, None
