"""Fused autograd nodes for the common case: one active LoRA or DoRA adapter on a Linear/Conv1D.

Composing the LoRA path from autograd ops costs more than the math needs: the in-place
accumulation into the base output goes through a view (autograd then copies the whole
(tokens, out) gradient), the two input gradients are allocated separately and summed, and
DoRA saves its pre-scale activation. One node per layer does each step once. Shapes: x
(..., in), W (out, in) (a transposed view for Conv1D), b (out,) or None, A (r, in),
B (out, r), m and n (out,), T = number of tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class LoraLinear(torch.autograd.Function):
    """z = W·x + b + s·B·(A·x̃), x̃ = dropout(x) (x̃ is x when dropout is off; Hu et al. 2021, §4.1).

    Backward (g = ∂L/∂z, (T, out)):

        ∂L/∂B = s·gᵀ·(A·x̃)      ∂L/∂A = s·(g·B)ᵀ·x̃      ∂L/∂x = g·W  (+ s·(g·B)·A when x̃ is x)
        ∂L/∂x̃ = s·(g·B)·A        ∂L/∂W = gᵀ·x            ∂L/∂b = Σ_tokens g

    Saves x, x̃ and the (T, r) product A·x̃; no (T, out) tensor.
    """

    @staticmethod
    def forward(ctx, x, dropped, weight, bias, lora_A, lora_B, scaling: float):
        lora_in = x if dropped is None else dropped
        out = F.linear(x, weight, bias)  # (..., out)
        hidden = lora_in @ lora_A.T  # (..., r)
        out.view(-1, out.shape[-1]).addmm_(hidden.reshape(-1, hidden.shape[-1]), lora_B.T, alpha=scaling)
        ctx.scaling = scaling
        ctx.save_for_backward(x, dropped, hidden, weight, bias, lora_A, lora_B)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, dropped, hidden, weight, bias, lora_A, lora_B = ctx.saved_tensors
        s = ctx.scaling
        g = grad_out.reshape(-1, weight.shape[0])  # (T, out)
        x2d = x.reshape(-1, x.shape[-1])
        lora_in = x2d if dropped is None else dropped.reshape(-1, x.shape[-1])
        g_hidden = (g @ lora_B).mul_(s)  # (T, r)
        grad_x = grad_dropped = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = g @ weight  # (T, in)
            if dropped is None:
                grad_x.addmm_(g_hidden, lora_A)
            grad_x = grad_x.view(x.shape)
        if dropped is not None and ctx.needs_input_grad[1]:
            grad_dropped = (g_hidden @ lora_A).view(x.shape)
        if ctx.needs_input_grad[2]:
            grad_w = g.T @ x2d
        if bias is not None and ctx.needs_input_grad[3]:
            grad_b = g.sum(0)
        grad_a = g_hidden.T @ lora_in  # (r, in)
        grad_bmat = (g.T @ hidden.reshape(-1, hidden.shape[-1])).mul_(s)  # (out, r)
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

    The output must not be modified in place by later ops (autograd raises if it is).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, lora_A, lora_B, magnitude, norm, scaling: float):
        out = F.linear(x, weight)  # (..., out)
        hidden = x @ lora_A.T  # (..., r)
        out2d = out.view(-1, out.shape[-1])
        out2d.addmm_(hidden.reshape(-1, hidden.shape[-1]), lora_B.T, alpha=scaling)
        out2d.mul_(magnitude / norm)
        if bias is not None:
            out2d.add_(bias)
        ctx.scaling = scaling
        ctx.save_for_backward(x, hidden, weight, bias, lora_A, lora_B, magnitude, norm, out)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, hidden, weight, bias, lora_A, lora_B, magnitude, norm, out = ctx.saved_tensors
        s = ctx.scaling
        n_out = weight.shape[0]
        g = grad_out.reshape(-1, n_out)  # (T, out)
        x2d, h2d, z = x.reshape(-1, x.shape[-1]), hidden.reshape(-1, hidden.shape[-1]), out.view(-1, n_out)
        g_scaled = g * (magnitude / norm)  # (T, out)
        g_hidden = (g_scaled @ lora_B).mul_(s)  # (T, r)
        grad_x = grad_w = grad_b = grad_m = None
        if ctx.needs_input_grad[0]:
            grad_x = (g_scaled @ weight).addmm_(g_hidden, lora_A).view(x.shape)
        if ctx.needs_input_grad[1]:
            grad_w = g_scaled.T @ x2d
        if bias is not None and ctx.needs_input_grad[2]:
            grad_b = g.sum(0)
        grad_a = g_hidden.T @ x2d  # (r, in)
        grad_bmat = (g_scaled.T @ h2d).mul_(s)  # (out, r)
        if ctx.needs_input_grad[5]:
            g_dot_z = torch.linalg.vecdot(g.T, z.T)  # Σ_t g·z, (out,)
            if bias is not None:
                g_dot_z = g_dot_z - bias * g.sum(0)
            grad_m = g_dot_z / magnitude
            zero = (magnitude == 0).nonzero().flatten()
            if zero.numel():  # y/n cannot be recovered from z there: recompute those rows
                y = x2d @ weight[zero].T + s * (h2d @ lora_B[zero].T)  # (T, k)
                grad_m[zero] = torch.linalg.vecdot(g[:, zero].T, y.T) / norm[zero]
        return grad_x, grad_w, grad_b, grad_a, grad_bmat, grad_m, None, None
