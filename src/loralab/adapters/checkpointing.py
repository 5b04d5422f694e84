"""Gradient checkpointing on a model whose embeddings are frozen.

With reentrant checkpointing (``torch.utils.checkpoint(..., use_reentrant=True)``, Hugging Face's
default in ``model.gradient_checkpointing_enable()``), a checkpointed block only passes gradients
back when one of its *inputs* requires grad. After `inject` nothing below the first block does —
the embeddings are frozen — so ``loss.backward()`` fails ("element 0 of tensors does not require
grad") or the adapters inside the blocks get no gradient. PEFT asks users to call
``model.enable_input_require_grads()``, and only does it itself when checkpointing was switched on
before ``get_peft_model``.

loralab does it in either order: two small hooks make the input embeddings' output require grad
while the model trains with checkpointing on (checked per forward pass). Otherwise they do nothing,
so the backward pass never pays for gradients into the embeddings it does not need.
"""

from __future__ import annotations

import torch
from torch import nn

_FLAG = "_loralab_grad_into_blocks"
_HOLDERS = "_loralab_checkpointing_modules"  # HF's modules with a `gradient_checkpointing` switch


def _note_checkpointing(model: nn.Module, args) -> None:
    """Forward pre-hook on the model: tell the input embeddings whether to hand out a grad-requiring output.
    Reads the few switch-holding modules found at install time (HF's ``is_gradient_checkpointing`` walks
    every module: ~0.3 ms per MiniLM step)."""
    embeddings = model.get_input_embeddings()
    embeddings.__dict__[_FLAG] = (model.training and torch.is_grad_enabled()
                                  and any(m.gradient_checkpointing for m in model.__dict__.get(_HOLDERS, ())))


def _output_requires_grad(embeddings: nn.Module, args, output):
    """Forward hook on the input embeddings (what ``enable_input_require_grads`` does, when flagged)."""
    if embeddings.__dict__.get(_FLAG, False) and isinstance(output, torch.Tensor) and not output.requires_grad:
        output.requires_grad_(True)
    return output


def let_gradients_through_checkpoints(model: nn.Module) -> None:
    """Install the two hooks on a model with ``get_input_embeddings`` (idempotent; others: nothing to do)."""
    get_embeddings = getattr(model, "get_input_embeddings", None)
    embeddings = get_embeddings() if callable(get_embeddings) else None
    if not isinstance(embeddings, nn.Module):
        return
    model.__dict__[_HOLDERS] = [m for m in model.modules() if isinstance(getattr(m, "gradient_checkpointing", None), bool)]
    if _note_checkpointing not in model._forward_pre_hooks.values():
        model.register_forward_pre_hook(_note_checkpointing)
    if _output_requires_grad not in embeddings._forward_hooks.values():
        embeddings.register_forward_hook(_output_requires_grad)


def remove_checkpoint_hooks(model: nn.Module) -> None:
    """Take the hooks out again (`merge_and_unload` returns a model free of loralab)."""
    for module in model.modules():
        for hooks, hook in ((module._forward_pre_hooks, _note_checkpointing), (module._forward_hooks, _output_requires_grad)):
            for key in [k for k, fn in hooks.items() if fn is hook]:
                del hooks[key]
        module.__dict__.pop(_FLAG, None)
        module.__dict__.pop(_HOLDERS, None)
