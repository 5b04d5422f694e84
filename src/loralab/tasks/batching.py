"""Tokenise a `Dataset` once, then pad each batch to its own longest sequence.

Classification: ``input_ids``, ``attention_mask``, ``labels`` (class index).
Causal LM: the prompt in the model's chat format followed by the response and the
end-of-turn token; ``labels`` is -100 on the prompt, so the loss covers the response only.
"""

from __future__ import annotations

import torch

from loralab.data import Dataset

IGNORE = -100


CHARS_PER_TOKEN = 64  # no tokenizer's token spans more characters: text beyond max_length × this is never kept


def encode(dataset: Dataset, tokenizer, max_length: int) -> list[dict]:
    """One dict of token lists per example. Texts are cut to max_length × `CHARS_PER_TOKEN` characters before
    tokenising (a 10 MB line used to be tokenised whole — 2M words, a minute — to keep its first tokens)."""
    cap = max_length * CHARS_PER_TOKEN
    if dataset.task == "classification":
        ids = tokenizer([e["text"][:cap] for e in dataset.examples], truncation=True, max_length=max_length)["input_ids"]
        return [{"input_ids": i, "labels": e["label"]} for i, e in zip(ids, dataset.examples)]
    rows = []
    end = tokenizer.eos_token or ""
    for example in dataset.examples:
        prompt = chat_prompt(tokenizer, example["prompt"][:cap])
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        response_ids = tokenizer(example["response"][:cap] + end, add_special_tokens=False)["input_ids"]
        input_ids = (prompt_ids + response_ids)[:max_length]
        labels = ([IGNORE] * len(prompt_ids) + response_ids)[:max_length]
        rows.append({"input_ids": input_ids, "labels": labels})
    return rows


def chat_prompt(tokenizer, question: str) -> str:
    """The user turn plus the assistant header, in the tokenizer's chat format when it has one."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
    return f"Question: {question}\nAnswer: "


def labelled(row: dict) -> int:
    """What a row adds to the loss's mean: 1 (classification) or its labelled next-token positions (causal LM)."""
    labels = row["labels"]
    return 1 if isinstance(labels, int) else sum(label != IGNORE for label in labels[1:])


def cut(rows: list, pieces: int) -> list[list]:
    """``rows`` in ``pieces`` consecutive runs whose sizes differ by at most one."""
    size, extra = divmod(len(rows), pieces)
    bounds = [i * size + min(i, extra) for i in range(pieces + 1)]
    return [rows[a:b] for a, b in zip(bounds, bounds[1:])]


def padded_tokens(rows: list[dict]) -> int:
    return len(rows) * max(len(r["input_ids"]) for r in rows)


def forward_pieces(shares: list[list[dict]], max_tokens) -> int:
    """How many forward passes each process's share of a batch runs as: the fewest k, the same on every process
    (their collectives pair up), for which every share `cut` into k holds at most ``max_tokens`` padded tokens
    per piece (a piece of one row may hold more). None: one pass."""
    smallest = min(len(share) for share in shares)
    if max_tokens is None:
        return 1
    for k in range(1, smallest):
        if all(len(p) == 1 or padded_tokens(p) <= max_tokens for share in shares for p in cut(share, k)):
            return k
    return max(smallest, 1)


def collate(rows: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad to the longest row of this batch (right padding)."""
    length = max(len(r["input_ids"]) for r in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    token_labels = not isinstance(rows[0]["labels"], int)
    if token_labels:
        labels = torch.full((len(rows), length), IGNORE, dtype=torch.long)
    else:
        labels = torch.empty(len(rows), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        input_ids[i, :n] = torch.tensor(row["input_ids"])
        mask[i, :n] = 1
        if token_labels:
            labels[i, :n] = torch.tensor(row["labels"])
        else:
            labels[i] = row["labels"]
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def epoch_order(n: int, seed: int, epoch: int, lengths: list[int] | None = None, batch_size: int = 1,
                megabatch: int = 50) -> list[int]:
    """The example order of one epoch: a permutation fixed by (seed, epoch), so resume needs no RNG state.

    With ``lengths`` (group by length, as HF's LengthGroupedSampler): the permutation is cut into
    mega-batches of ``megabatch × batch_size`` examples, each sorted by length (longest first), and
    the resulting batches are shuffled; each batch then pads to similar lengths.
    """
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=generator).tolist()
    if lengths is None:
        return order
    size = megabatch * batch_size
    grouped = [sorted(order[i : i + size], key=lambda k: -lengths[k]) for i in range(0, n, size)]
    batches = [chunk[i : i + batch_size] for chunk in grouped for i in range(0, len(chunk), batch_size)]
    full = [b for b in batches if len(b) == batch_size]
    return [k for j in torch.randperm(len(full), generator=generator).tolist() for k in full[j]] + \
        [k for b in batches if len(b) < batch_size for k in b]
