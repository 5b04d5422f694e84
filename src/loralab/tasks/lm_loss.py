"""The causal-LM loss from the last hidden states, a chunk of tokens at a time: the (tokens, vocabulary)
logits never exist at once, in the forward or the backward.

For hidden states h (N, H) at the N positions whose next token y (N,) is a label, and the output layer
W (V, H) (bias b (V,) or none):

    L = (1/N)·Σ_t [logsumexp(z_t) − z_t[y_t]],        z_t = W·h_t + b

Backward, with p_t = softmax(z_t) and e_y the one-hot label:

    ∂L/∂h_t = (p_t − e_y)ᵀ·W / N        ∂L/∂W = Σ_t (p_t − e_y)·h_tᵀ / N        ∂L/∂b = Σ_t (p_t − e_y) / N

Each chunk of C tokens recomputes its (C, V) logits in the backward (one more GEMM per chunk: the price
of never holding N·V floats). The logits and the softmax are float32 whatever the compute dtype, as in
Hugging Face's loss. Anchors: Liger kernel's fused linear cross-entropy, torchtune's chunked output loss.
"""

from __future__ import annotations

from typing import Optional

import torch

from loralab.adapters.precision import autocast_off, cast, compute_dtype

IGNORE = -100
CHUNK_ELEMENTS = 2**24  # logits per chunk: 64 MiB of float32


def chunk_tokens(vocab: int) -> int:
    return max(1, CHUNK_ELEMENTS // vocab)


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of W·h + b against y, a chunk of tokens at a time (see the module docstring)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk: int):
        n = hidden.shape[0]
        total = hidden.new_zeros((), dtype=torch.promote_types(hidden.dtype, torch.float32))
        lse = torch.empty(n, dtype=total.dtype, device=hidden.device)
        for start in range(0, n, chunk):
            logits = logits_of(hidden[start:start + chunk], weight, bias)  # (C, V) float32
            lse[start:start + chunk] = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, targets[start:start + chunk, None]).squeeze(1)
            total += (lse[start:start + chunk] - picked).sum()
        ctx.chunk = chunk
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        return total / max(n, 1)

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        n, chunk = hidden.shape[0], ctx.chunk
        scale = grad / max(n, 1)
        grad_h = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros_like(weight, dtype=lse.dtype) if ctx.needs_input_grad[1] else None
        grad_b = torch.zeros_like(bias, dtype=lse.dtype) if bias is not None and ctx.needs_input_grad[2] else None
        for start in range(0, n, chunk):
            h = hidden[start:start + chunk]
            probs = logits_of(h, weight, bias).sub_(lse[start:start + chunk, None]).exp_()  # softmax, (C, V)
            probs[torch.arange(h.shape[0], device=h.device), targets[start:start + chunk]] -= 1.0
            probs.mul_(scale)  # ∂L/∂z for the chunk
            if grad_h is not None:
                grad_h[start:start + chunk] = (probs.to(h.dtype) @ weight.to(h.dtype))
            if grad_w is not None:
                grad_w.addmm_(probs.T, h.to(lse.dtype))
            if grad_b is not None:
                grad_b += probs.sum(0)
        grad_w = None if grad_w is None else grad_w.to(weight.dtype)
        grad_b = None if grad_b is None else grad_b.to(bias.dtype)
        return grad_h, grad_w, grad_b, None, None


def logits_of(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """W·h + b for a chunk, (C, V), as float32 (or wider)."""
    logits = hidden @ weight.to(hidden.dtype).T
    if bias is not None:
        logits = logits + bias.to(hidden.dtype)
    return logits.to(torch.promote_types(hidden.dtype, torch.float32))


def causal_lm_loss(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], labels: torch.Tensor,
                   chunk: Optional[int] = None) -> tuple[torch.Tensor, int]:
    """(mean next-token loss over the labelled positions, their number), from hidden (B, T, H) and labels
    (B, T) aligned with the input (position t predicts label t + 1, -100 masked; Hugging Face's convention)."""
    targets = labels[:, 1:]
    keep = targets != IGNORE  # (B, T − 1)
    picked = hidden[:, :-1][keep]  # (N, H)
    dtype = compute_dtype(picked)
    with autocast_off(picked):
        picked, weight_c, bias_c = cast(dtype, picked, weight, bias)
        loss = ChunkedLinearCrossEntropy.apply(picked, weight_c, bias_c, targets[keep],
                                               chunk or chunk_tokens(weight.shape[0]))
    return loss, int(keep.sum())
