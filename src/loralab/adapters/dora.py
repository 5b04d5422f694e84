"""DoRA (Liu et al. 2024, "DoRA"): LoRA plus a trained magnitude vector — the math, its fused node, the variant.

DoRA writes the adapted weight as magnitude times direction:

    W' = m ⊙ (W + s·B·A) / ‖W + s·B·A‖_row,      z = m/n ⊙ (W·x + s·B·(A·x̃)) + b

with W (out, in), A (r, in), B (out, r), m (out,), n = ‖W + s·B·A‖_row and x̃ = dropout_p(x) on the LoRA
path only. §4.3 treats n as a constant in the backward pass, so it is computed without autograd and
never needs the (out, in) matrix W + s·B·A (`adapted_row_norm`). The output formula is `dora_output`,
shared by the training node and the no-gradient path.
"""

from __future__ import annotations

import torch

from loralab.adapters.dropout import sample_dropout, unpack_dropout
from loralab.adapters.fused import (
    a_gradient,
    formula_backward,
    input_gradient,
    linear_plus_low_rank,
    lora_hidden,
    rank_r_grad,
    rank_r_rows,
    rank_r_term,
    token_slices,
)
from loralab.adapters.precision import autocast_off, cast
from loralab.adapters.variant import LoraVariant, register


@torch.no_grad()
def adapted_row_norm(weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float) -> torch.Tensor:
    """‖W_i + s·(B·A)_i‖ for every output row i, without forming W + s·B·A.

    ‖W_i + s(BA)_i‖² = ‖W_i‖² + 2s·Σ_k B_ik (W·Aᵀ)_ik + s²·B_i (A·Aᵀ) B_iᵀ,
    so the only temporaries are (out, r) and (r, r) matrices.

    Args:
        weight: W, (out, in).
        lora_A: A, (r, in).
        lora_B: B, (out, r).
        scaling: s.

    Returns:
        The detached row norms, (out,), in float32 (or the inputs' wider type) whatever the
        inputs' precision (a bf16 base with float32 adapters computes in float32).
    """
    dtype = torch.promote_types(torch.promote_types(weight.dtype, lora_A.dtype), torch.float32)
    weight, lora_A, lora_B = weight.to(dtype), lora_A.to(dtype), lora_B.to(dtype)
    w_sq = torch.linalg.vector_norm(weight, dim=1).square()  # (out,), no (out, in) temporary
    w_at = weight @ lora_A.T  # (out, r)
    gram = lora_A @ lora_A.T  # (r, r)
    cross = (lora_B * w_at).sum(dim=1)  # (out,)
    delta_sq = ((lora_B @ gram) * lora_B).sum(dim=1)  # (out,)
    norm_sq = w_sq + 2.0 * scaling * cross + scaling * scaling * delta_sq
    return norm_sq.clamp_min(0.0).sqrt()


def dora_output(x2d, weight, bias, hidden, lora_B, scaling: float, row_scale):
    """z = m/n ⊙ (W·x + s·B·(A·x̃)) + b, (T, out), from hidden = A·x̃ᵀ (k, r, T/k) and row_scale = m/n (out,).

    m/n is folded into W and B when that (out, in) copy is smaller than the (T, out) output (many
    tokens), else applied to the output together with the bias (few tokens, e.g. generation).
    """
    if x2d.shape[0] > x2d.shape[1]:
        lora_term = (lora_B * (row_scale * scaling)[:, None]).T  # (r, out)
        return linear_plus_low_rank(x2d, weight * row_scale[:, None], bias, hidden, lora_term)
    out = linear_plus_low_rank(x2d, weight, None, hidden, lora_B.T * scaling)
    return out.mul_(row_scale) if bias is None else torch.addcmul(bias, out, row_scale, out=out)


def dora_formula(x, weight, bias, lora_A, lora_B, magnitude, norm, keep, scaling: float):
    """DoRA from differentiable ops (double backward); ``keep`` as in `fused.lora_formula`."""
    dropped = x if keep is None else x * keep
    out = (magnitude / norm) * (x @ weight.T + scaling * ((dropped @ lora_A.T) @ lora_B.T))
    return out if bias is None else out + bias


class DoraLinearFunction(torch.autograd.Function):
    """DoRA in one node (§4.3), dropout on the LoRA input path only.

    x (..., in), W (out, in), b (out,) or None, A (r, in), B (out, r), m and n (out,).
    (PEFT also drops the input of the magnitude's rescaling of W·x, which costs a second full GEMM
    per layer; here W always sees x, and E[z] is the same.)

    Memory: autograd on the composed ops saves the pre-scale activation y = W·x + s·B·A·x̃, one extra
    (tokens, out) tensor per layer. This node saves the *output* z instead and recovers
    y/n = (z − b)/m in the backward; the next op of a transformer usually saves z anyway. Rows with
    m = 0 are recomputed exactly. Backward (g = ∂L/∂z, g̃ = g ⊙ m/n):

        ∂L/∂m = Σ_tokens g ⊙ y/n      ∂L/∂B = s·g̃ᵀ·(A·x̃)      ∂L/∂A = s·(g̃·B)ᵀ·x̃
        ∂L/∂x = g̃·W + s·(g̃·B)·A ⊙ ∂x̃/∂x      ∂L/∂W = g̃ᵀ·x      ∂L/∂b = Σ_tokens g

    g̃ is never formed: g̃·W = g·(m/n ⊙ W) and g̃·B = g·(m/n ⊙ B). The output must not be modified in
    place by later ops (autograd raises if it is).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, lora_A, lora_B, magnitude, norm, scaling: float, p: float = 0.0):
        x2d = x.reshape(-1, x.shape[-1])  # (T, in)
        drop = sample_dropout(x2d, p)
        hidden = lora_hidden(x2d, lora_A, drop)  # A·x̃ᵀ, (k, r, T/k)
        out = dora_output(x2d, weight, bias, hidden, lora_B, scaling, magnitude / norm).view(*x.shape[:-1], -1)
        ctx.scaling, ctx.p = scaling, p
        ctx.save_for_backward(x, hidden, weight, bias, lora_A, lora_B, magnitude, norm, out,
                              None if drop is None else drop.packed())
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, hidden, weight, bias, lora_A, lora_B, magnitude, norm, out, positions = ctx.saved_tensors
        s, n_out = ctx.scaling, weight.shape[0]
        x2d = x.reshape(-1, x.shape[-1])
        drop = unpack_dropout(positions, x2d, ctx.p)
        if torch.is_grad_enabled():  # create_graph: differentiate the formula, so second derivatives are right
            keep = None if drop is None else drop.keep_mask(x)
            grads = formula_backward(lambda *t: dora_formula(*t, norm, keep, s),
                                     (x, weight, bias, lora_A, lora_B, magnitude), ctx.needs_input_grad[:6], grad_out)
            return (*grads, None, None, None)
        with autocast_off(grad_out):
            g, z = grad_out.reshape(-1, n_out), out.view(-1, n_out)  # (T, out)
            g_slices = token_slices(g, hidden.shape[0])  # (k, T/k, out)
            col_scale = magnitude / norm  # (out,); g̃ = g ⊙ m/n is never formed
            g_hidden = rank_r_rows((lora_B * (col_scale * s)[:, None]).T, g_slices)  # s·(g̃·B)ᵀ, (k, r, T/k)
            factor = lora_A if drop is None else lora_A * drop.keep_scale
            grad_x = (input_gradient(g, (weight * col_scale[:, None]).T, g_hidden, factor, drop)
                      if ctx.needs_input_grad[0] else None)
            grad_a = a_gradient(g_hidden, x2d, drop)
            grad_w = (g.T @ x2d).mul_(col_scale[:, None]) if ctx.needs_input_grad[1] else None
            g_sum = g.sum(0) if bias is not None else None  # (out,)
            grad_b = g_sum if bias is not None and ctx.needs_input_grad[2] else None
            grad_bmat = rank_r_grad(hidden, g_slices).mul_(col_scale * s).T  # (out, r)
            grad_m = magnitude_grad(g, z, x2d, weight, bias, g_sum, lora_B, hidden, magnitude, norm, s) \
                if ctx.needs_input_grad[5] else None
        grad_x = None if grad_x is None else grad_x.view(x.shape)
        return grad_x, grad_w, grad_b, grad_a, grad_bmat, grad_m, None, None, None


def magnitude_grad(g, z, x2d, weight, bias, g_sum, lora_B, hidden, magnitude, norm, s: float):
    """∂L/∂m = Σ_t g ⊙ y/n with y/n = (z − b)/m; rows with m = 0 recompute y from x and A·x̃.

    Under torch.compile the zero rows are not known while tracing, so y is recomputed for every row
    and the zero rows taken from it (one more (T, out) product, but no graph break).
    """
    g_dot_z = torch.linalg.vecdot(g.T, z.T)  # Σ_t g·z, (out,)
    if bias is not None:
        g_dot_z = g_dot_z - bias * g_sum
    zero = magnitude == 0
    if torch.compiler.is_compiling():
        y = x2d @ weight.T + s * rank_r_term(hidden, lora_B.T)  # (T, out)
        return torch.where(zero, torch.linalg.vecdot(g.T, y.T) / norm, g_dot_z / torch.where(zero, 1, magnitude))
    grad_m = g_dot_z / magnitude
    rows = zero.nonzero().flatten()
    if rows.numel():  # y/n cannot be recovered from z there: recompute those rows
        y = x2d @ weight[rows].T + s * rank_r_term(hidden, lora_B[rows].T)  # (T, number of zero rows)
        grad_m[rows] = torch.linalg.vecdot(g[:, rows].T, y.T) / norm[rows]
    return grad_m


@register
class DoraVariant(LoraVariant):
    """W' = m ⊙ (W + s·B·A)/‖W + s·B·A‖_row with a trained magnitude m (out,), ``lora_magnitude[name]``.

    Merging keeps the row norm n of the merged weight in ``dora_norm[name]`` (the state dict), which
    unmerge divides back out.
    """

    name = "dora"
    routes_stacked = False

    def add(self, layer, name, dtype):
        layer.lora_magnitude[name] = torch.nn.Parameter(self.row_norm(layer, name).to(dtype))

    def remove(self, layer, name):
        del layer.lora_magnitude[name]

    def extra_params(self, layer, name):
        return [layer.lora_magnitude[name]]

    def row_norm(self, layer, name: str) -> torch.Tensor:
        """n = ‖W + s·B·A‖_row, detached, float32 or wider, (out,) (kept inside `frozen`)."""
        weight, (lora_A, lora_B, _) = layer.weight_out_in(), layer.adapter_factors(name)
        return layer.derived.get(("norm", name), (weight, lora_A, lora_B),
                                 lambda: adapted_row_norm(weight, lora_A, lora_B, layer.scaling[name]))

    def row_scale(self, layer, name: str, dtype: torch.dtype) -> torch.Tensor:
        """m/n in ``dtype``, (out,), for the no-gradient path (kept inside `frozen`)."""
        weight, (lora_A, lora_B, magnitude) = layer.weight_out_in(), layer.adapter_factors(name)
        return layer.derived.get(("scale", name, dtype), (weight, lora_A, lora_B, magnitude),
                                 lambda: (magnitude / self.row_norm(layer, name)).to(dtype))

    @torch.no_grad()
    def reset_magnitude(self, layer, name: str) -> None:
        """m = ‖W + s·B·A‖_row: after loading new base weights, so the adapter starts at W."""
        layer.lora_magnitude[name].copy_(self.row_norm(layer, name))

    def forward(self, layer, x, name):
        """m/n ⊙ (W·x + s·B·A·x̃) + b in the compute dtype: the fused node, or `dora_output` without gradients."""
        s = layer.scaling[name]
        magnitude = layer.lora_magnitude[name]
        with layer.operands(x, name) as (x, weight, bias, lora_A, lora_B, p):
            if not torch.is_grad_enabled() and p == 0:
                x2d = x.reshape(-1, x.shape[-1])
                out = dora_output(x2d, weight, bias, lora_hidden(x2d, lora_A), lora_B, s,
                                  self.row_scale(layer, name, x.dtype))
                return out.view(*x.shape[:-1], -1)
            magnitude, norm = cast(x.dtype, magnitude, self.row_norm(layer, name))
            return DoraLinearFunction.apply(x, weight, bias, lora_A, lora_B, magnitude, norm, s, p)

    def term(self, layer, x, name, base_out):
        """The whole DoRA output minus the base output: (m/n − 1) ⊙ W·x + m/n ⊙ s·B·A·x̃ (the bias cancels)."""
        return (self.forward(layer, x, name) - base_out).to(base_out.dtype)

    @torch.no_grad()
    def merged_weight(self, layer, weight, name):
        """m/n ⊙ (W + s·B·A), n = ‖W + s·B·A‖_row of the ``weight`` given."""
        lora_A, lora_B, magnitude = layer.adapter_factors(name)
        norm = adapted_row_norm(weight, lora_A, lora_B, layer.scaling[name])
        return (magnitude / norm)[:, None] * super().merged_weight(layer, weight, name)

    def merge(self, layer, weight, name):
        lora_A, lora_B, _ = layer.adapter_factors(name)
        layer.dora_norm.set(name, adapted_row_norm(weight, lora_A, lora_B, layer.scaling[name]))
        super().merge(layer, weight, name)

    def unmerge(self, layer, weight, name):
        norm = layer.dora_norm.pop(name)
        weight.mul_((norm / layer.lora_magnitude[name])[:, None])
        super().unmerge(layer, weight, name)
