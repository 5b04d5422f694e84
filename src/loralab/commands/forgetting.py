"""`loralab forgetting RUN`: what a finished run forgot, against its freshly loaded base, on another dataset's texts
(the measurements: `loralab.analysis.forgetting`)."""

from __future__ import annotations

import torch

from loralab.analysis.forgetting import lm_forgetting, reference_rows, representation_drift

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
            return {**header, **lm_forgetting(base, tuned, rows, tokenizer.pad_token_id, batch_size)}
        ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
        rows = [{"input_ids": i, "labels": 0} for i in ids]  # a placeholder label: collate wants one
        return {**header, **representation_drift(lambda b: base(**b), lambda b: tuned(**b), rows, tokenizer.pad_token_id)}
