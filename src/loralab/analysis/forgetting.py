"""Forgetting: how far a tuned model moved from its base on data it was not tuned on.

* **Causal LM** (SmolLM2): on a reference text set from another domain (news articles, not the
  chat Q→A data), the next-token loss of the base and of the tuned model, and the mean over
  tokens of KL(p_base ‖ p_tuned) = Σ_v p_base(v)·(log p_base(v) − log p_tuned(v)).
* **Encoder** (MiniLM, whose package ships no masked-LM head): representation drift on another
  task's texts, head-free — linear CKA (Kornblith et al. 2019, eq. 5) between the base's and the
  tuned model's mean-pooled hidden states, per layer: CKA(X, Y) = ‖YᵀX‖_F² / (‖XᵀX‖_F·‖YᵀY‖_F)
  for column-centred X, Y (examples × features); 1 − CKA is the drift.

`lm_forgetting` takes the two models (their last hidden states and output layers, so the logits are
formed a chunk of tokens at a time); `representation_drift` two callables on a batch. Which run, which
texts: `loralab.commands.forgetting`.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from loralab.tasks.batching import collate
from loralab.tasks.lm_loss import logits_of
from loralab.tasks.objective import decoder_and_head

Forward = Callable[[dict], object]  # batch → model output


def reference_rows(texts: list[str], tokenizer, max_length: int) -> list[dict]:
    """Plain text for language modelling: every token is a target (labels = input_ids)."""
    ids = tokenizer(texts, truncation=True, max_length=max_length, add_special_tokens=False)["input_ids"]
    return [{"input_ids": i, "labels": list(i)} for i in ids if len(i) > 1]


@torch.no_grad()
def lm_forgetting(base: nn.Module, tuned: nn.Module, rows: list[dict], pad_id: int, batch_size: int = 16,
                  per_text: bool = False) -> dict:
    """Next-token loss of each model on ``rows`` and the mean token KL(base ‖ tuned). From each model's last
    hidden states and output layer, a chunk of tokens at a time (`tasks.lm_loss`): neither model's
    (tokens, vocabulary) logits exist whole; a model without a separate output layer gives its logits.
    ``per_text``: also each row's token count and summed loss increase and KL (``"per_text"``), so that an
    interval can be had by resampling texts."""
    totals = {"base": 0.0, "tuned": 0.0, "kl": 0.0}
    tokens = 0
    texts: dict[str, list] = {"tokens": [], "loss_increase": [], "kl": []}
    for start in range(0, len(rows), batch_size):
        batch = collate(rows[start : start + batch_size], pad_id)
        targets = batch.pop("labels")[:, 1:]
        mask = batch["attention_mask"][:, 1:].bool()
        picked = targets[mask]  # (N,)
        row_of = torch.arange(mask.shape[0])[:, None].expand_as(mask)[mask]  # (N,) the row of each token
        increase, kl = torch.zeros(mask.shape[0], dtype=torch.float64), torch.zeros(mask.shape[0], dtype=torch.float64)
        (h_p, w_p, b_p), (h_q, w_q, b_q) = (last_states(model, batch, mask) for model in (base, tuned))
        for at in range(0, picked.shape[0], CHUNK):
            log_p = torch.log_softmax(logits_of(h_p[at:at + CHUNK], w_p, b_p).double(), -1)  # (C, vocab)
            log_q = torch.log_softmax(logits_of(h_q[at:at + CHUNK], w_q, b_q).double(), -1)
            target = picked[at:at + CHUNK, None]
            nll_p, nll_q = -log_p.gather(1, target)[:, 0], -log_q.gather(1, target)[:, 0]  # (C,)
            kl_tokens = (log_p.exp() * (log_p - log_q)).sum(-1)  # (C,)
            totals["base"] += float(nll_p.sum())
            totals["tuned"] += float(nll_q.sum())
            totals["kl"] += float(kl_tokens.sum())
            if per_text:
                increase.index_add_(0, row_of[at:at + CHUNK], nll_q - nll_p)
                kl.index_add_(0, row_of[at:at + CHUNK], kl_tokens)
        tokens += int(mask.sum())
        if per_text:
            texts["tokens"] += mask.sum(1).tolist()
            texts["loss_increase"] += increase.tolist()
            texts["kl"] += kl.tolist()
    base_loss, tuned_loss = totals["base"] / tokens, totals["tuned"] / tokens
    out = {"tokens": tokens, "base_loss": base_loss, "tuned_loss": tuned_loss, "loss_increase": tuned_loss - base_loss,
           "kl_base_tuned": totals["kl"] / tokens}
    return {**out, "per_text": texts} if per_text else out


CHUNK = 256  # tokens per chunk of logits (× vocabulary floats, for each of the two models)


def last_states(model: nn.Module, batch: dict, mask: torch.Tensor):
    """(hidden states at the masked positions (N, H), output weight (V, H), bias) — or, for a model without a
    separate output layer, (its logits there (N, V), the identity, None)."""
    found = decoder_and_head(model)
    if found is None:
        logits = model(**batch).logits[:, :-1][mask]
        return logits, torch.eye(logits.shape[-1], dtype=logits.dtype, device=logits.device), None
    decoder, head = found
    hidden = decoder(**batch).last_hidden_state[:, :-1][mask]
    return hidden, head.weight, head.bias


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two representations of the same examples, x (n, d1), y (n, d2)."""
    x = x.double() - x.double().mean(0)
    y = y.double() - y.double().mean(0)
    cross = (y.T @ x).square().sum()
    return float(cross / ((x.T @ x).norm() * (y.T @ y).norm()))


@torch.no_grad()
def pooled_states(forward: Forward, rows: list[dict], pad_id: int, batch_size: int = 32) -> list[torch.Tensor]:
    """Mean-pooled hidden states of every layer (embeddings first), each (examples, hidden)."""
    layers: list[list[torch.Tensor]] = []
    for start in range(0, len(rows), batch_size):
        batch = collate(rows[start : start + batch_size], pad_id)
        batch.pop("labels", None)
        mask = batch["attention_mask"][..., None].double()
        states = forward({**batch, "output_hidden_states": True}).hidden_states
        for index, h in enumerate(states):
            if len(layers) <= index:
                layers.append([])
            layers[index].append((h.double() * mask).sum(1) / mask.sum(1))
    return [torch.cat(chunks) for chunks in layers]


def representation_drift(base: Forward, tuned: Forward, rows: list[dict], pad_id: int) -> dict:
    """Per-layer linear CKA between base and tuned pooled hidden states, and the last layer's drift."""
    cka = [linear_cka(a, b) for a, b in zip(pooled_states(base, rows, pad_id), pooled_states(tuned, rows, pad_id))]
    return {"examples": len(rows), "cka_per_layer": cka, "last_layer_cka": cka[-1], "drift": 1.0 - cka[-1],
            "measure": "linear CKA of mean-pooled hidden states (Kornblith et al. 2019)"}
