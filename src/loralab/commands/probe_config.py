"""`loralab probe`'s settings and the command it prints — apart from the probe itself, so the command line lists
the flags without importing torch."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from loralab.errors import ConfigError


@dataclass
class ProbeConfig:
    """A rank probe.

    Attributes:
        model: Model name or directory.
        data: Dataset name or file.
        targets: Layers to probe (comma-separated names, 'all-linear' or a regex); default: the attention
            query and value projections.
        batches: How many batches the gradients and activations are collected over.
        batch_size: Examples per batch.
        max_length: Token limit.
        energy: The energy fraction a rank must reach.
        r: Mean rank of the rank pattern written to rank_pattern.json: r × layers rank units divided in
            proportion to each layer's gradient effective rank, at least 1 each (the allocation the rank
            benchmark tests against uniform, EVA and random); train with it by `loralab train --rank-pattern
            OUT/rank_pattern.json`.
        head_steps: Full-batch AdamW steps (weight decay 0.1) fitting the classification head on frozen features.
        seed: Seed of the split, the head initialisation and the batch order.
        out: Output directory (probe.json, probe.md, probe.png, rank_pattern.json).
    """

    model: str = "minilm"
    data: str = "movie"
    targets: Optional[str] = None
    batches: int = 8
    batch_size: int = 16
    max_length: int = 64
    energy: float = 0.9
    r: int = 8
    head_steps: int = 100
    seed: int = 0
    out: str = "runs/probe"

    def __post_init__(self) -> None:
        for name, minimum in (("batches", 1), ("batch_size", 1), ("max_length", 1), ("r", 1), ("head_steps", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ConfigError(f"--{name.replace('_', '-')} must be an integer ≥ {minimum}, got {value!r}.")
        if not 0 < self.energy <= 1:
            raise ConfigError(f"--energy is the fraction of the energy a rank must reach, in (0, 1]; got {self.energy}.")


PATTERN_FILE = "rank_pattern.json"


def train_command(cfg: ProbeConfig, rank: Optional[int] = None) -> str:
    """The ``loralab train`` command that trains the probed layers with the allocated ranks, or with one ``rank``
    on every layer."""
    targets = ["--targets", cfg.targets] if cfg.targets else []
    ranks = ["--rank", str(rank)] if rank is not None else ["--rank-pattern", str(Path(cfg.out) / PATTERN_FILE)]
    return shlex.join(["loralab", "train", "--model", cfg.model, "--data", cfg.data, *targets, *ranks])


