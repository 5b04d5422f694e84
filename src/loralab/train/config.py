"""`TrainConfig`: one fine-tuning run, validated when built; the CLI flags are its fields."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Optional

from loralab.errors import DataError

METHODS = ("full", "lora", "dora", "did", "said")
PROJECTIONS = ("fastfood", "dense", "sparse")


@dataclass
class TrainConfig:
    """A fine-tuning run.

    Attributes:
        model: Model name (minilm, smollm2), a local HF model directory, or a hub id when online.
        data: Dataset name (movie, tweets, amazon, nyt, trec, sms, bbc, chat-qa) or a CSV/JSONL file.
        method: full (every weight trains), lora, dora, or the intrinsic-subspace methods did and said.
        r: LoRA rank.
        alpha: LoRA alpha; the update is scaled by alpha/r (alpha/sqrt(r) with --rslora).
        dropout: Dropout on the LoRA input path.
        targets: Comma-separated module names (exact or .suffix), 'all-linear', or a regex. Default:
            query,value for lora/dora; every tensor for did/said.
        rslora: Scale by alpha/sqrt(r) (rank-stabilised LoRA).
        d: Subspace dimension for did/said (SAID's per-tensor scales count towards it).
        projection: Random projection for did/said: fastfood, dense or sparse.
        epochs: Passes over the training split.
        lr: Peak learning rate (AdamW).
        batch_size: Examples per optimizer step and process group (the global batch).
        grad_accum: Micro-batches accumulated per optimizer step (each of --batch-size examples).
        warmup: Fraction of the optimizer steps with linear warm-up; the rest decays linearly to 0.
        weight_decay: AdamW weight decay.
        max_grad_norm: Clip the gradient norm to this (0 turns clipping off).
        max_train: Use at most this many training examples (the first of the seeded split).
        max_eval: Use at most this many validation and test examples.
        max_length: Truncate sequences to this many tokens.
        eval_batch_size: Batch size for evaluation.
        seed: Seed for the split, the initialisation, the data order and dropout.
        out: Run directory: metrics.jsonl, result.json, the adapter (or model), checkpoints.
        checkpoint_every: Also checkpoint every this many optimizer steps (0: only at epoch ends).
        resume: Continue from the run directory's last checkpoint.
        log_every: Write the training loss to metrics.jsonl every this many steps.
        threads: torch CPU threads (default: torch's choice).
    """

    model: str = "minilm"
    data: str = "movie"
    method: str = "lora"
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: Optional[str] = None
    rslora: bool = False
    d: int = 1000
    projection: str = "fastfood"
    epochs: int = 3
    lr: float = 5e-4
    batch_size: int = 16
    grad_accum: int = 1
    warmup: float = 0.06
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_train: Optional[int] = None
    max_eval: Optional[int] = None
    max_length: int = 128
    eval_batch_size: int = 64
    seed: int = 0
    out: str = "runs/run"
    checkpoint_every: int = 0
    resume: bool = False
    log_every: int = 10
    threads: Optional[int] = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise DataError(f"--method must be one of {METHODS}, got {self.method!r}.")
        if self.projection not in PROJECTIONS:
            raise DataError(f"--projection must be one of {PROJECTIONS}, got {self.projection!r}.")
        for name in ("r", "d", "epochs", "batch_size", "grad_accum", "max_length", "eval_batch_size", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise DataError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}.")
        for name in ("max_train", "max_eval", "threads"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise DataError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}.")
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 0:
            raise DataError(f"--checkpoint-every must be ≥ 0, got {self.checkpoint_every!r}.")
        for name in ("lr", "alpha", "weight_decay", "max_grad_norm", "warmup", "dropout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise DataError(f"--{name.replace('_', '-')} must be a finite number ≥ 0, got {value!r}.")
        if self.lr == 0:
            raise DataError("--lr must be > 0; try 5e-4 for LoRA or 5e-5 for full fine-tuning.")
        if self.warmup >= 1:
            raise DataError(f"--warmup is a fraction of the steps in [0, 1), got {self.warmup}.")
        if self.dropout >= 1:
            raise DataError(f"--dropout must be in [0, 1), got {self.dropout}.")

    def target_spec(self):
        """``targets`` as LoraConfig wants it: 'all-linear', a regex, or a list of names
        (None for did/said without --targets: every tensor moves)."""
        if self.targets is None:
            return None if self.method in ("did", "said") else ["query", "value"]
        text = self.targets.strip()
        if text == "all-linear" or re.search(r"[\\*()\[\]|^$+?]", text):
            return text
        return [t.strip() for t in text.split(",") if t.strip()]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def field_help(cls=TrainConfig) -> dict[str, str]:
    """Each field's one-line description, from the class docstring's Attributes section."""
    helps, current = {}, None
    text = (cls.__doc__ or "").split("Attributes:", 1)[-1]
    for line in text.splitlines():
        found = re.match(r"\s{8}(\w+): (.*)", line)
        if found:
            current = found.group(1)
            helps[current] = found.group(2).strip()
        elif current and line.strip():
            helps[current] += " " + line.strip()
    return helps
