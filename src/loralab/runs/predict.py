"""Labels with probabilities, or generated answers, for new inputs: from a run, a merged model, or a model and an
adapter."""


from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

import loralab as ll
from loralab import models
from loralab.errors import ConfigError, DataError
from loralab.methods import get_method
from loralab.runs.load import load_run, model_task, model_with_adapter
from loralab.tasks.batching import chat_prompt, collate


def model_for_prediction(run: Optional[str | Path] = None, model: Optional[str] = None,
                         adapter: Optional[str | Path] = None, labels: Optional[list[str]] = None):
    """(plain model in eval mode, tokenizer, labels, task, token limit) of a run (its update merged in; the
    run's --max-length), of a model plus a PEFT-format adapter (see `adapter_task`; 128 tokens), or of a
    model directory with a task head (a merged run, any HF classifier or causal LM; 128 tokens)."""
    if (run is None) == (model is None):
        raise ConfigError("give a run directory (RUN) or --model DIR (a merged run or a classifier / causal LM, "
                          "or any model with --adapter DIR).")
    if run is not None and adapter is not None:
        raise ConfigError("RUN predicts with the run's own adapter; --adapter goes with --model.")
    if run is not None:
        cfg, net, tokenizer, labels, task = load_run(run)
        net, max_length = get_method(cfg.method).merge(net), cfg.max_length
    elif adapter is not None:
        net, tokenizer, labels, task = model_with_adapter(model, adapter, labels)
        max_length = 128
    else:
        task, labels = task_of(model)
        net, tokenizer = models.load(model, task)
        max_length = 128
    return net.eval(), tokenizer, labels, task, max_length


def task_of(model: str) -> tuple[str, list[str]]:
    """`model_task` of a model that must have a trained task head to predict with."""
    task, labels = model_task(model)
    if task is not None:
        return task, labels
    from transformers import AutoConfig

    architectures = AutoConfig.from_pretrained(models.resolve(model)).architectures or []
    raise DataError(f"model {model!r} ({', '.join(architectures) or 'no architectures in config.json'}) has no "
                    "trained task head to predict with; give a run directory, or a model merged from one "
                    "(`loralab merge RUN --out DIR`).")


@torch.no_grad()
def classify(net, tokenizer, labels: list[str], texts: list[str], max_length: int, batch_size: int = 32) -> list[dict]:
    """{"text", "label", "probabilities": {label: p}} per text, in input order; batched by length (less
    padding), each batch padded as in training (`collate`)."""
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
    results: list[dict] = [{}] * len(texts)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        batch = collate([{"input_ids": ids[i], "labels": 0} for i in chunk], tokenizer.pad_token_id)
        batch.pop("labels")
        for i, p in zip(chunk, net(**batch).logits.float().softmax(-1).tolist()):
            best = max(range(len(p)), key=p.__getitem__)
            results[i] = {"text": texts[i], "label": labels[best],
                          "probabilities": {name: round(v, 6) for name, v in zip(labels, p)}}
    return results


@torch.no_grad()
def answer(net, tokenizer, prompts: list[str], max_new_tokens: int, max_length: int) -> list[dict]:
    """{"prompt", "response"} per prompt: greedy decoding after the prompt in the chat format of training."""
    results = []
    for prompt in prompts:
        ids = tokenizer(chat_prompt(tokenizer, prompt), add_special_tokens=False, return_tensors="pt")["input_ids"]
        ids = ids[:, -max_length:]
        out = net.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                           do_sample=False, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        response = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
        results.append({"prompt": prompt, "response": response})
    return results


def predict(inputs: list[str], run: Optional[str | Path] = None, model: Optional[str] = None,
            max_new_tokens: int = 64, batch_size: int = 32, max_length: Optional[int] = None,
            adapter: Optional[str | Path] = None, labels: Optional[list[str]] = None) -> list[dict]:
    """Labels with probabilities (classification) or generated responses (causal LM) for ``inputs``;
    ``max_length`` tokens per input (default: the run's, or 128)."""
    if not inputs:
        raise DataError("nothing to predict on: give texts (--text), or --file FILE (a .txt with one per line, "
                        "a .csv/.tsv/.jsonl with a text or prompt column, or - for standard input).")
    net, tokenizer, labels, task, default_length = model_for_prediction(run, model, adapter, labels)
    max_length = max_length or default_length
    models.check_max_length(net, tokenizer, max_length, model or str(run))
    with ll.frozen(net):  # serving: DoRA norms (and the like) computed once, not per call
        if task == "classification":
            return classify(net, tokenizer, labels, inputs, max_length, batch_size)
        return answer(net, tokenizer, inputs, max_new_tokens, max_length)


