"""`Objective`: the model plus its task loss, as the one module the trainer calls, DDP wraps and FSDP shards.

* classification: the Hugging Face model's own loss (cross-entropy of its head's logits);
* causal LM: the decoder's last hidden states, then `lm_loss.causal_lm_loss` over the labelled positions
  only, a chunk of tokens at a time — the batch × length × vocabulary logits are never formed. A model
  without a separate decoder and output layer (or a wrapper such as SAID's) falls back to its own loss.

Calling the wrapper (not ``model.base_model`` directly) keeps DistributedDataParallel's gradient hooks
and FSDP's unsharding in the path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from loralab.tasks.lean import lighten, right_padded
from loralab.tasks.lm_loss import IGNORE, causal_lm_loss


@dataclass
class Output:
    """A batch's mean loss, what it averaged over (examples or labelled tokens), and the classifier's logits."""

    loss: torch.Tensor
    count: int
    logits: Optional[torch.Tensor] = None


def decoder_and_head(model: nn.Module):
    """(the decoder returning last hidden states, the output Linear) of a Hugging Face causal LM, or None."""
    get_output = getattr(model, "get_output_embeddings", None)
    head = get_output() if callable(get_output) else None
    decoder = getattr(model, "base_model", None)
    if not isinstance(head, nn.Linear) or not isinstance(decoder, nn.Module) or decoder is model:
        return None
    config = getattr(model, "config", None)
    if any(getattr(config, name, None) not in (None, 1.0) for name in ("final_logit_softcapping", "logit_scale")):
        return None  # logits transformed after the head (Gemma 2, Cohere): the model's own loss knows how
    return decoder, head


class Objective(nn.Module):
    """``forward(input_ids, attention_mask, labels)`` → `Output` for the run's task."""

    def __init__(self, model: nn.Module, task: str, lean: bool = False):
        super().__init__()
        self.model, self.task = model, task
        self.chunked = task == "causal_lm" and decoder_and_head(model) is not None
        if lean and self.chunked:
            lighten(model)  # the same numbers, less kept for the backward (`tasks.lean`)

    def forward(self, input_ids, attention_mask, labels) -> Output:
        if self.task == "classification":
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
            return Output(out.loss, labels.shape[0], out.logits)
        if not self.chunked:
            loss = self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
            return Output(loss, int((labels[:, 1:] != IGNORE).sum()))
        decoder, head = decoder_and_head(self.model)
        mask = None if right_padded(attention_mask) else attention_mask  # causal: padding at the end is never seen
        hidden = decoder(input_ids=input_ids, attention_mask=mask).last_hidden_state  # (B, T, H)
        loss, count = causal_lm_loss(hidden, head.weight, head.bias, labels)
        return Output(loss, count)
