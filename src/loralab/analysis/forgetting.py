"""Forgetting: how far a tuned model moved from its base on data it was not tuned on.

* **Causal LM** (SmolLM2): on a reference text set from another domain (news articles, not the
  chat Q→A data), the next-token loss of the base and of the tuned model, and the mean over
  tokens of KL(p_base ‖ p_tuned) = Σ_v p_base(v)·(log p_base(v) − log p_tuned(v)).
* **Encoder** (MiniLM, whose package ships no masked-LM head): representation drift on another
  task's texts, head-free — linear CKA (Kornblith et al. 2019, eq. 5) between the base's and the
  tuned model's mean-pooled hidden states, per layer: CKA(X, Y) = ‖YᵀX‖_F² / (‖XᵀX‖_F·‖YᵀY‖_F)
  for column-centred X, Y (examples × features); 1 − CKA is the drift.

Both take two callables on a batch (the base and the tuned model), so an adapter's base is the
same model under `loralab.disabled` and no second copy is needed.
"""

from __future__ import annotations

from typing import Callable

import torch

from loralab.train.batching import collate

Forward = Callable[[dict], object]  # batch → model output


def reference_rows(texts: list[str], tokenizer, max_length: int) -> list[dict]:
    """Plain text for language modelling: every token is a target (labels = input_ids)."""
    ids = tokenizer(texts, truncation=True, max_length=max_length, add_special_tokens=False)["input_ids"]
    return [{"input_ids": i, "labels": list(i)} for i in ids if len(i) > 1]


@torch.no_grad()
def lm_forgetting(base: Forward, tuned: Forward, rows: list[dict], pad_id: int, batch_size: int = 16) -> dict:
    """Next-token loss of each model on ``rows`` and the mean token KL(base ‖ tuned)."""
    totals = {"base": 0.0, "tuned": 0.0, "kl": 0.0}
    tokens = 0
    for start in range(0, len(rows), batch_size):
        batch = collate(rows[start : start + batch_size], pad_id)
        targets = batch.pop("labels")[:, 1:]
        mask = batch["attention_mask"][:, 1:].bool()
        log_p = torch.log_softmax(base(batch).logits[:, :-1].double(), -1)[mask]  # (tokens, vocab)
        log_q = torch.log_softmax(tuned(batch).logits[:, :-1].double(), -1)[mask]
        picked = targets[mask]
        totals["base"] -= float(log_p.gather(1, picked[:, None]).sum())
        totals["tuned"] -= float(log_q.gather(1, picked[:, None]).sum())
        totals["kl"] += float((log_p.exp() * (log_p - log_q)).sum())
        tokens += int(mask.sum())
    base_loss, tuned_loss = totals["base"] / tokens, totals["tuned"] / tokens
    return {"tokens": tokens, "base_loss": base_loss, "tuned_loss": tuned_loss, "loss_increase": tuned_loss - base_loss,
            "kl_base_tuned": totals["kl"] / tokens}


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


DEFAULT_REFERENCE = "bbc"  # news prose: another domain than every other packaged task (movie for a bbc run)


def reference_texts(name: str, limit: int) -> list[str]:
    """Up to ``limit`` texts of a dataset's test split: the text of classification rows, the prompt and
    response of prompt/response rows."""
    from loralab import data as datasets

    split = datasets.load(name, "test", 0, limit)
    return [e["text"] if "text" in e else f"{e['prompt']}\n{e['response']}" for e in split.examples]


@torch.no_grad()
def run_forgetting(run, on: str | None = None, max_texts: int = 60, max_length: int = 96,
                   batch_size: int = 16) -> dict:
    """What a finished run forgot, against its freshly loaded base model, on another dataset's texts:
    `lm_forgetting` for a causal LM, `representation_drift` (CKA per layer) for a classifier."""
    from pathlib import Path

    from loralab import models
    from loralab.runs import load_run
    from loralab.train.devices import autocast

    cfg, tuned, tokenizer, labels, task = load_run(run)
    # the base loaded again, not the tuned model under `ll.disabled`: full and DID runs have no adapter to
    # switch off, and a PiSSA/OLoRA run's disabled model is the residual W − s·B₀·A₀, not the base
    on = on or ("movie" if Path(cfg.data).stem == DEFAULT_REFERENCE else DEFAULT_REFERENCE)
    base, _ = models.load(cfg.model, task, num_labels=len(labels) or None,
                          attn_implementation=models.attention_for(cfg.precision))
    base.eval()
    tuned.eval()
    texts = reference_texts(on, max_texts)
    header = {"run": str(run), "model": cfg.model, "method": cfg.method, "trained_on": cfg.data, "on": on,
              "texts": len(texts), "max_length": max_length}
    with autocast(cfg.precision):
        if task == "causal_lm":
            rows = reference_rows(texts, tokenizer, max_length)
            return {**header, **lm_forgetting(lambda b: base(**b), lambda b: tuned(**b), rows, tokenizer.pad_token_id,
                                              batch_size)}
        ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
        rows = [{"input_ids": i, "labels": 0} for i in ids]  # a placeholder label: collate wants one
        return {**header, **representation_drift(lambda b: base(**b), lambda b: tuned(**b), rows, tokenizer.pad_token_id)}
