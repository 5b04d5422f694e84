"""Causal-LM task units for the rank question (issue 32): SmolLM2 mapping a plain BBC News passage to an output
whose information content differs while the inputs stay identical.

* ``bbc-copy`` — the response is the passage itself: the instruct model half does this already, and what is left
  to learn (answer with the passage, nothing else) is one behaviour — a task expected to need little rank.
* ``bbc-cipher`` — the response is the passage letter-substituted by one fixed permutation of a–z
  (`forgetting_runs.cipher`): every output token is new to the model, and the mapping from each plain token to
  its enciphered tokens must be stored in the adapter — a task whose need should grow with rank.

Passages are ``WORDS`` consecutive words of an article (up to ``PER_ARTICLE`` windows of each of BBC's distinct
articles — it holds some twice); train/validation/test are split **by article** (80/10/10, seeded), and a passage
that recurs is kept only in the first split it occurs in, so no test passage was seen in training. Each pair is a
chat turn (`tasks.batching.encode`): the loss is on the response tokens.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from loralab import data as datasets
from loralab.experiments.forgetting_runs import cipher, encipher
from loralab.io.atomic import atomic_write

WORDS, PER_ARTICLE, MAX_LENGTH = 12, 4, 96
KINDS = ("copy", "cipher")


@dataclass(frozen=True)
class LmUnit:
    """One causal-LM unit: its kind (``copy`` or ``cipher``) and how many training pairs it uses."""

    kind: str
    max_train: int = 4000
    max_length: int = MAX_LENGTH

    @property
    def name(self) -> str:
        return f"bbc-{self.kind}"


def windows(text: str, words: int = WORDS, count: int = PER_ARTICLE) -> list[str]:
    """The first ``count`` non-overlapping windows of ``words`` words of ``text`` (a short last window dropped)."""
    tokens = text.split()
    return [" ".join(tokens[i : i + words]) for i in range(0, len(tokens) - words + 1, words)][:count]


def response(kind: str, passage: str, table: Optional[dict[str, str]] = None) -> str:
    """The unit's answer to ``passage``; ``table``: the cipher's letter map (default `forgetting_runs.cipher()`)."""
    if kind == "copy":
        return passage
    if kind == "cipher":
        return encipher(passage, table or cipher())
    raise ValueError(f"unknown causal-LM unit kind {kind!r}; use one of {KINDS}")


def article_splits(count: int, seed: int = 0) -> dict[str, list[int]]:
    """Article indices per split: 80/10/10 of a seeded permutation of ``count`` articles."""
    order = list(range(count))
    random.Random(seed).shuffle(order)
    train, val = round(count * 0.8), round(count * 0.1)
    return {"train": order[:train], "validation": order[train : train + val], "test": order[train + val :]}


def build(unit: LmUnit, root: Path, seed: int = 0) -> tuple[str, str, str]:
    """(train, validation, test) JSONL files of ``unit``'s prompt/response pairs under ``root``, written once."""
    paths = tuple(root / f"{unit.name}-{split}.jsonl" for split in datasets.SPLITS)
    if all(p.exists() for p in paths):
        return tuple(map(str, paths))
    articles = sorted({r["text"] for r in datasets.read_all("bbc")[2]})  # BBC holds some articles twice
    splits = article_splits(len(articles), seed)
    root.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    table = cipher()
    for split, path in zip(datasets.SPLITS, paths):
        passages = [w for a in splits[split] for w in windows(articles[a]) if w not in seen]
        passages = list(dict.fromkeys(passages))  # a passage once per split, and in no later split
        seen.update(passages)
        pairs = [{"prompt": w, "response": response(unit.kind, w, table)} for w in passages]

        def write(tmp: str, pairs=pairs) -> None:
            Path(tmp).write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")

        atomic_write(path, write)
    return tuple(map(str, paths))
