"""`loralab probe`: the rank probe's results written out — probe.json, probe.md, probe.png, and rank_pattern.json
for `loralab train --rank-pattern` (the measurements: `loralab.analysis.probe`)."""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from loralab.adapters.config import exact_pattern
from loralab.analysis.probe import LayerStats, allocate_ranks, pooled_positions
from loralab.analysis.rank_predictors import PRIMARY
from loralab.commands.plots import plot_probe
from loralab.commands.probe_config import PATTERN_FILE, ProbeConfig, train_command
from loralab.errors import ConfigError, DataError
from loralab.tasks.batching import collate, encode, epoch_order


def fit_head(model: nn.Module, batches: list[dict], steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit the classification head on frozen features (its input captured by a hook), in place; returns (the frozen
    features the head's output layer reads (examples, features), the labels)."""

    inner = output_layer(model)
    features = []
    hook = inner.register_forward_hook(lambda m, args, out: features.append(args[0].detach()))
    with torch.no_grad():
        for i, batch in enumerate(batches):
            model(**batch)
            if features[i].dim() == 3:  # a per-token head (Llama's, GPT-2's score): the token HF pools
                features[i] = features[i][torch.arange(len(features[i])), pooled_positions(model, batch)]
    hook.remove()
    x, y = torch.cat(features), torch.cat([b["labels"] for b in batches])
    frozen = x.detach().clone()
    trainable = {p: p.requires_grad for p in inner.parameters()}
    inner.requires_grad_(True)
    optimizer = torch.optim.AdamW(inner.parameters(), lr=1e-2, weight_decay=0.1)  # a few hundred examples separate
    with torch.enable_grad():
        for _ in range(steps):
            loss = nn.functional.cross_entropy(inner(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    for param, flag in trainable.items():
        param.requires_grad_(flag)
        param.grad = None
    return frozen, y


def output_layer(model: nn.Module) -> nn.Module:
    """The classification head's output layer (the last Linear of the last head module)."""
    from loralab import models

    head = getattr(model, models.head_names(model)[-1])
    return next((m for m in reversed(list(head.modules())) if isinstance(m, nn.Linear)), head)


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
    predicted = {k: statistics.median(r[k] for r in layers.values())
                 for k in ("gradient_effective_rank", "gradient", "gradient_covariance", "activation")}
    allocated = allocate_ranks({p: r[PRIMARY] for p, r in layers.items()}, budget=cfg.r * len(layers))
    return {"config": asdict(cfg), "task": train.task, "examples": len(batches) * cfg.batch_size,
            "train_examples": len(train), "layers": layers, "predicted_rank": predicted,
            "recommendation": recommend([r[PRIMARY] for r in layers.values()]), "allocated_rank": allocated,
            "seconds": time.time() - started}


def power_of_two(x: float, round_with=round) -> int:
    """The power of two nearest ``x`` on the log scale (``round_with`` math.floor / math.ceil: at or below / above),
    at least 1."""
    return 2 ** max(0, int(round_with(math.log2(max(x, 1.0)))))


def recommend(values: list[float]) -> dict:
    """A rank to train with. From the pre-registered predictor's per-layer values (the power of two nearest their
    median; the powers of two around their quartiles as the range to try) while the rank benchmark has not scored it
    or has validated it; once the benchmark has found that it does not predict the needed rank, from what the
    benchmark measured instead (the power of two covering the highest needed rank r90 of its tasks; the range from
    their median up), not specific to this task. Either way with how the predictor scored (`BENCHMARK_SCORE`)."""
    from loralab.analysis.rank_predictors import BENCHMARK_SCORE, PRIMARY

    q1, median, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else (values[0],) * 3
    predicted = {"rank": power_of_two(statistics.median(values)),
                 "try": [power_of_two(q1, math.floor), power_of_two(q3, math.ceil)]}
    score = BENCHMARK_SCORE or {"status": "not yet scored: the rank benchmark (docs/study/rank/README.md, "
                                          "pre-registered) has not finished, so this rank is a guess to try, not a "
                                          "validated prediction"}
    if "validated" not in score or score["validated"] or score["needed_rank"]["highest"] is None:
        return {"predictor": PRIMARY, **predicted, "basis": "predictor", "from_predictor": predicted, "benchmark": score}
    needed = score["needed_rank"]
    covering = power_of_two(needed["highest"][1], math.ceil)
    return {"predictor": PRIMARY, "rank": covering, "try": [power_of_two(needed["median"], math.floor), covering],
            "basis": "benchmark", "from_predictor": predicted, "benchmark": score}


def scored_text(advice: dict) -> str:
    """How the recommendation was made and how the predictor scored on the rank benchmark, in one sentence."""
    benchmark = advice["benchmark"]
    if "rho" not in benchmark:
        return (f"from {advice['predictor']} (the median over layers of the task gradient's effective rank); "
                f"{benchmark['status']}")
    units = "tasks" if benchmark.get("test", "H1") == "H1" else "units: these tasks and benchmark v2's planted-rank ones"
    scored = (f"Spearman ρ = {benchmark['rho']:.2f} against the measured needed ranks of {benchmark['n']} {units}, "
              f"one-sided p = {benchmark['p_value']:.2g}")
    if advice["basis"] == "predictor":
        return (f"from {advice['predictor']} (the median over layers of the task gradient's effective rank); on the "
                f"rank benchmark it scored {scored}")
    needed, own = benchmark["needed_rank"], advice["from_predictor"]
    return (f"from what the rank benchmark measured, not from this task: its {needed['units']} tasks needed r90 "
            f"{needed['lowest'][1]:.2g}–{needed['highest'][1]:.2g} (median {needed['median']:.2g}; r90 on held-out "
            f"loss, MiniLM-L6 classification), and {advice['predictor']}, the pre-registered predictor, did not predict "
            f"them ({scored}). Its value for this task would give r = {own['rank']} ({own['try'][0]}–{own['try'][1]})")


def allocation_text(benchmark: dict) -> str:
    """How the predictor's per-layer allocation did against uniform on the benchmark, or that it is untested."""
    against = benchmark.get("allocation_vs_uniform")
    if not against or not against["units"]:
        return ("The rank benchmark (docs/study/rank) tests this allocation against uniform, EVA-style and random "
                "ones at equal rank units; until it has scored it, train both this and a uniform r and compare.")
    return (f"On the rank benchmark this allocation had lower test loss than uniform at equal rank units on "
            f"{against['lower']} of {against['units']} tasks (paired 95% interval below 0 on "
            f"{against['interval_below_0']}, above 0 on {against['interval_above_0']}; docs/study/rank); train both "
            "this and a uniform r and compare.")


def write_probe(cfg: ProbeConfig) -> dict:
    """`run_probe`, then under ``cfg.out``: probe.json, probe.md (a per-layer table), probe.png and
    rank_pattern.json — the allocated ranks as exact-module keys for ``loralab train --rank-pattern``."""
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


def probe_summary(cfg: ProbeConfig, result: dict) -> dict:
    """What `loralab probe --json` prints: the recommendation with how its predictor scored on the rank benchmark,
    the predicted ranks, and the two ways to train (one rank everywhere; the allocated rank pattern)."""
    return {"recommendation": result["recommendation"], "predicted_rank": result["predicted_rank"],
            "rank_pattern": str(Path(cfg.out) / PATTERN_FILE),
            "train": train_command(cfg), "train_uniform": train_command(cfg, result["recommendation"]["rank"]),
            "seconds": round(result["seconds"], 1)}


def probe_text(cfg: ProbeConfig, result: dict) -> str:
    """What `loralab probe` prints: the recommendation and how it was made, the allocation's record, the commands."""
    advice = result["recommendation"]
    return "\n".join([
        f"Recommended rank: {advice['rank']} (try {advice['try'][0]}–{advice['try'][1]}), {scored_text(advice)}.",
        f"Allocated {cfg.r} × {len(result['allocated_rank'])} layers = {sum(result['allocated_rank'].values())} rank "
        f"units in proportion to each layer's {PRIMARY}. {allocation_text(advice['benchmark'])}",
        f"Per-layer table and plot: {Path(cfg.out) / 'probe.md'} (probe.json, probe.png).",
        "Train with one rank:", f"    {train_command(cfg, advice['rank'])}",
        "or with the allocated ranks:", f"    {train_command(cfg)}"])


def probe_markdown(cfg: ProbeConfig, result: dict) -> str:
    allocated, advice = result["allocated_rank"], result["recommendation"]
    lines = [f"# Rank probe: {cfg.model} on {cfg.data}", "",
             f"**Recommended rank: {advice['rank']}** (try {advice['try'][0]}–{advice['try'][1]}), "
             f"{scored_text(advice)}.", "",
             f"{result['examples']} examples in {cfg.batches} batches, rank at {cfg.energy:.0%} energy, "
             f"{result['seconds']:.1f} s. Predicted rank (median over layers): "
             + ", ".join(f"{k} {v:g}" for k, v in result["predicted_rank"].items()) + ".", "",
             f"Allocated: {cfg.r} × {len(allocated)} layers = {sum(allocated.values())} rank units, in proportion to "
             f"each layer's {PRIMARY} (≥ 1 each); {PATTERN_FILE} holds them. With --alpha fixed, a layer of rank "
             f"r_l is scaled by alpha/r_l. {allocation_text(advice['benchmark'])}", "",
             "With one rank, and with the allocation:", "",
             f"    {train_command(cfg, advice['rank'])}", f"    {train_command(cfg)}", "",
             "![ranks per layer](probe.png)", "",
             "| layer | gradient | gradient covariance | activation | allocated |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {p} | {r['gradient']} | {r['gradient_covariance']} | {r['activation']} | {allocated[p]} |"
              for p, r in result["layers"].items()]
    return "\n".join(lines) + "\n"


def task_probe(model_name: str, data: str, max_length: int = 64, examples: int = 256, batch_size: int = 8,
               shuffles: int = 3, seed: int = 0, targets: Optional[str] = None, head_steps: int = 50,
               max_train: Optional[int] = None) -> dict:
    """Every rank predictor of `analysis.rank_predictors` for a task, at the pretrained weights, on ``examples``
    training examples: {"layers": per layer, "task": per task (the primary one is `rank_predictors.PRIMARY`),
    "seconds"}. ``max_train``: the training examples the task will train on (the data-size baseline counts these,
    not the whole split)."""
    from loralab.adapters.config import LoraConfig
    from loralab.adapters.inject import match_targets
    from loralab.analysis import rank_predictors as rp
    from loralab.train.config import TrainConfig

    started = time.time()
    cfg = ProbeConfig(model=model_name, data=data, targets=targets, batches=max(1, examples // batch_size),
                      batch_size=batch_size, max_length=max_length, seed=seed, head_steps=head_steps)
    model, train, batches = probe_batches(cfg)
    classifier = train.task == "classification"
    initial_head = {k: v.clone() for k, v in output_layer(model).state_dict().items()} if classifier else None
    features, labels = fit_head(model, batches, head_steps) if classifier else (None, None)
    paths = match_targets(model, LoraConfig(targets=TrainConfig(targets=targets).target_spec()))
    modules = {p: model.get_submodule(p) for p in paths}
    model.requires_grad_(False)
    for module in modules.values():
        module.weight.requires_grad_(True)
    recorders = {p: rp.LayerRecorder(m) for p, m in modules.items()}
    moments, sums = rp.gradient_moment(model, modules, batches, recorders)
    for rec in recorders.values():
        rec.remove()
    nulls = []
    for k in range(shuffles):  # the null gets the same treatment: a head fitted (from the same start) to its labels
        fake = rp.shuffled(batches, seed + 1 + k)
        if classifier:
            output_layer(model).load_state_dict(initial_head)
            fit_head(model, fake, head_steps)
        nulls.append(rp.gradient_moment(model, modules, fake)[0])
    layers = rp.layer_predictors(recorders, moments, nulls, sums)
    task = rp.task_predictors(layers)
    if train.task == "classification":
        n_train = min(len(train), max_train) if max_train else len(train)
        task.update(rp.label_baselines([e["label"] for e in train.examples], len(train.labels), n_train))
        task["cca_deficit"] = rp.cca_deficit(features, labels, len(train.labels))
    task["mean_tokens"] = statistics.fmean(int(b["attention_mask"].sum(1).float().mean()) for b in batches)
    return {"layers": layers, "task": task, "primary": rp.PRIMARY, "examples": len(batches) * batch_size,
            "seconds": time.time() - started}
