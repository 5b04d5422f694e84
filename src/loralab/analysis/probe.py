"""The rank probe: predict the rank a task needs from the pretrained model, before any training.

At the pretrained weights, on N batches of the task's training data:

1. (classification) the new head is fitted on frozen features first, so the gradients below
   carry the task's signal and not a random head's;
2. every target layer's weight gradient G_b (out, in) is taken on each batch b, and its input
   activations X_b (tokens, in) are kept as a Gram matrix.

Per layer, three predictors of the rank, each the rank reaching ``energy`` (90%) of its spectrum:

* ``gradient``: the summed gradient G = Σ_b G_b — how many directions the first full-batch step
  would move the layer in (the direction LoRA-GA-style initialisations align A and B with);
* ``gradient_covariance``: the input-side second moment Σ_b G_bᵀ·G_b (in × in), i.e. the singular
  values of the stacked gradients [G_1; …; G_N] — how many input directions the gradients
  occupy across batches (a K-FAC-like factor of the gradient covariance);
* ``activation``: EVA-style (Paischer et al. 2024) explained variance of the layer's inputs,
  Σ_b X_bᵀ·X_b — how many input directions the data uses at all (labels not needed).

The task's predicted rank is the median over layers of each. Cost: N forward passes for the head
and N forward + backward passes, against an epoch of n_train / batch_size steps.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, replace
from typing import Optional

import torch
from torch import nn

from loralab.analysis.spectra import energy_rank
from loralab.errors import ConfigError, DataError
from loralab.train.batching import collate, encode, epoch_order


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
            proportion to each layer's gradient rank, at least 1 each (the allocation the study's claim 9
            tests against a uniform r); train with it by `loralab train --rank-pattern OUT/rank_pattern.json`.
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


class LayerStats:
    """Per-layer accumulators: the gradient sum, the stacked gradients' Gram, the input Gram."""

    def __init__(self, module: nn.Module, kind: str):
        self.module, self.kind = module, kind
        self.grad_sum: Optional[torch.Tensor] = None
        self.grad_gram: Optional[torch.Tensor] = None
        self.input_gram: Optional[torch.Tensor] = None
        self.mask: Optional[torch.Tensor] = None
        self.handle = module.register_forward_hook(self.record_input)

    def weight_grad(self) -> torch.Tensor:
        """∂L/∂W as (out, in) (Conv1D stores W as (in, out))."""
        g = self.module.weight.grad.double()
        return g if self.kind == "linear" else g.T

    def record_input(self, module, args, output) -> None:
        x = args[0].detach().double()
        x = x[self.mask] if self.mask is not None and x.dim() == 3 else x.reshape(-1, x.shape[-1])
        gram = x.T @ x
        self.input_gram = gram if self.input_gram is None else self.input_gram + gram

    def add_gradient(self) -> None:
        g = self.weight_grad()
        self.grad_sum = g.clone() if self.grad_sum is None else self.grad_sum + g
        gram = g.T @ g
        self.grad_gram = gram if self.grad_gram is None else self.grad_gram + gram

    def ranks(self, energy: float) -> dict:
        """Rank at ``energy`` for each predictor, from singular values (Gram eigenvalues are σ²)."""
        def from_gram(gram):
            return torch.linalg.eigvalsh(gram).flip(0).clamp_min(0).sqrt()

        return {"gradient": energy_rank(torch.linalg.svdvals(self.grad_sum), energy),
                "gradient_covariance": energy_rank(from_gram(self.grad_gram), energy),
                "activation": energy_rank(from_gram(self.input_gram), energy)}


def fit_head(model: nn.Module, batches: list[dict], steps: int) -> None:
    """Fit the classification head on frozen features (its input captured by a hook), in place."""
    from loralab import models

    head = getattr(model, models.head_names(model)[-1])  # the last head module holds the output layer
    inner = next((m for m in reversed(list(head.modules())) if isinstance(m, nn.Linear)), head)
    features = []
    hook = inner.register_forward_hook(lambda m, args, out: features.append(args[0].detach()))
    with torch.no_grad():
        for i, batch in enumerate(batches):
            model(**batch)
            if features[i].dim() == 3:  # a per-token head (Llama's, GPT-2's score): the token HF pools
                features[i] = features[i][torch.arange(len(features[i])), pooled_positions(model, batch)]
    hook.remove()
    x, y = torch.cat(features), torch.cat([b["labels"] for b in batches])
    optimizer = torch.optim.AdamW(inner.parameters(), lr=1e-2, weight_decay=0.1)  # a few hundred examples separate
    for _ in range(steps):
        loss = nn.functional.cross_entropy(inner(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def pooled_positions(model: nn.Module, batch: dict) -> torch.Tensor:
    """(B,) index of the token a decoder's sequence-classification head reads: the last one that is
    not padding (``input_ids != config.pad_token_id``), the rule of HF's ``*ForSequenceClassification``."""
    not_pad = batch["input_ids"] != model.config.pad_token_id
    positions = torch.arange(not_pad.shape[1], device=not_pad.device)
    return (positions * not_pad).argmax(-1)


def probe_batches(cfg: ProbeConfig):
    """(model, task, batches) — the model freshly loaded with a seeded head, the probe's batches."""
    from loralab import data as datasets
    from loralab import models

    torch.manual_seed(cfg.seed)
    train = datasets.load(cfg.data, "train", cfg.seed)
    model, tokenizer = models.load(cfg.model, train.task, num_labels=len(train.labels) or None)
    models.check_max_length(model, tokenizer, cfg.max_length, cfg.model)
    count = min(cfg.batches, len(train) // cfg.batch_size) * cfg.batch_size
    if count == 0:
        raise DataError(f"{cfg.data}'s training split has {len(train)} examples, fewer than one batch of "
                        f"{cfg.batch_size}; lower --batch-size.")
    chosen = [train.examples[i] for i in epoch_order(len(train), cfg.seed, 0)[:count]]
    rows = encode(replace(train, examples=chosen), tokenizer, cfg.max_length)
    batches = [collate(rows[i : i + cfg.batch_size], tokenizer.pad_token_id) for i in range(0, count, cfg.batch_size)]
    return model.eval(), train, batches


def run_probe(cfg: ProbeConfig) -> dict:
    """Probe ``cfg.targets`` of ``cfg.model`` on ``cfg.data``; returns per-layer and per-task ranks."""
    from loralab.adapters.config import LoraConfig
    from loralab.adapters.inject import match_targets
    from loralab.adapters.kinds import layer_kind
    from loralab.methods.lora import refuse_unmatched_targets
    from loralab.train.config import TrainConfig

    started = time.time()
    model, train, batches = probe_batches(cfg)
    targets = TrainConfig(targets=cfg.targets).target_spec()
    paths = match_targets(model, LoraConfig(targets=targets))
    refuse_unmatched_targets(model, targets, paths)
    if train.task == "classification":
        fit_head(model, batches, cfg.head_steps)
    model.requires_grad_(False)
    stats = {p: LayerStats(model.get_submodule(p), layer_kind(model.get_submodule(p))) for p in paths}
    for s in stats.values():
        s.module.weight.requires_grad_(True)
    for batch in batches:
        for s in stats.values():
            s.mask = batch["attention_mask"].bool()
            s.module.weight.grad = None
        model(**batch).loss.backward()
        for s in stats.values():
            s.add_gradient()
    for s in stats.values():
        s.handle.remove()
    layers = {p: s.ranks(cfg.energy) for p, s in stats.items()}
    predicted = {k: statistics.median(r[k] for r in layers.values()) for k in ("gradient", "gradient_covariance",
                                                                             "activation")}
    allocated = allocate_ranks({p: r["gradient"] for p, r in layers.items()}, budget=cfg.r * len(layers))
    return {"config": asdict(cfg), "task": train.task, "examples": len(batches) * cfg.batch_size,
            "train_examples": len(train), "layers": layers, "predicted_rank": predicted,
            "allocated_rank": allocated, "seconds": time.time() - started}


def allocate_ranks(layer_scores: dict[str, float], budget: int, minimum: int = 1) -> dict[str, int]:
    """Per-layer ranks proportional to ``layer_scores`` that sum to ``budget`` (each ≥ ``minimum``).

    Largest-remainder rounding, so the total is exact; used to compare a probe-allocated rank
    pattern with a uniform rank at the same number of rank units (e.g. budget = 8 × layers).
    """
    names = list(layer_scores)
    spare = budget - minimum * len(names)
    if spare < 0:
        raise ValueError(f"a budget of {budget} cannot give {len(names)} layers rank ≥ {minimum}")
    total = sum(max(layer_scores[n], 0.0) for n in names) or 1.0
    shares = {n: spare * max(layer_scores[n], 0.0) / total for n in names}
    ranks = {n: minimum + int(shares[n]) for n in names}
    leftover = budget - sum(ranks.values())
    for n in sorted(names, key=lambda k: shares[k] - int(shares[k]), reverse=True)[:leftover]:
        ranks[n] += 1
    return ranks


def write_probe(cfg: ProbeConfig) -> dict:
    """`run_probe`, then under ``cfg.out``: probe.json, probe.md (a per-layer table), probe.png and
    rank_pattern.json — the allocated ranks as exact-module keys for ``loralab train --rank-pattern``."""
    import json
    import sys
    from pathlib import Path

    from loralab.adapters.config import exact_pattern
    from loralab.analysis.plots import plot_probe

    result = run_probe(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "probe.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / PATTERN_FILE).write_text(json.dumps(exact_pattern(result["allocated_rank"]), indent=1) + "\n")
    (out / "probe.md").write_text(probe_markdown(cfg, result))
    try:
        plot_probe(result, out / "probe.png")
    except ConfigError as err:  # matplotlib is optional: the tables stand without the figure
        print(f"probe.png not drawn: {err}", file=sys.stderr)
    return result


PATTERN_FILE = "rank_pattern.json"


def train_command(cfg: ProbeConfig) -> str:
    """The ``loralab train`` command that trains the probed layers with the allocated ranks."""
    import shlex
    from pathlib import Path

    targets = ["--targets", cfg.targets] if cfg.targets else []
    return shlex.join(["loralab", "train", "--model", cfg.model, "--data", cfg.data, *targets,
                       "--rank-pattern", str(Path(cfg.out) / PATTERN_FILE)])


def probe_markdown(cfg: ProbeConfig, result: dict) -> str:
    allocated = result["allocated_rank"]
    lines = [f"# Rank probe: {cfg.model} on {cfg.data}", "",
             f"{result['examples']} examples in {cfg.batches} batches, rank at {cfg.energy:.0%} energy, "
             f"{result['seconds']:.1f} s. Predicted rank (median over layers): "
             + ", ".join(f"{k} {v:g}" for k, v in result["predicted_rank"].items()) + ".", "",
             f"Allocated: {cfg.r} × {len(allocated)} layers = {sum(allocated.values())} rank units, in proportion to "
             f"each layer's gradient rank (≥ 1 each); {PATTERN_FILE} holds them. With --alpha fixed, a layer of rank "
             "r_l is scaled by alpha/r_l. In the study (claim 9: MiniLM, four tasks, seeds) this allocation scored "
             "slightly below a uniform r = 8, so train both and compare. With the allocation:", "",
             f"    {train_command(cfg)}", "",
             "![ranks per layer](probe.png)", "",
             "| layer | gradient | gradient covariance | activation | allocated |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {p} | {r['gradient']} | {r['gradient_covariance']} | {r['activation']} | {allocated[p]} |"
              for p, r in result["layers"].items()]
    return "\n".join(lines) + "\n"
