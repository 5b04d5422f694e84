"""Claim 8's runs: SmolLM2 tuned on chat-qa with LoRA r=8, r=64 and full fine-tuning, and what each forgot.

Learning rates come from a small validation sweep (`study_plan.SMOLLM2_LR_GRID`, lowest validation
loss). Gain = the base model's held-out chat-qa test loss minus the tuned model's. Forgetting =
`analysis.forgetting.lm_forgetting` on BBC News test articles (a different domain: news prose,
not chat), against the untouched base model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from loralab.experiments import study_plan as plan
from loralab.experiments.context import Context

REFERENCE, REFERENCE_TEXTS, REFERENCE_TOKENS = "bbc", 60, 96


def chosen_lr(ctx: Context, method: str) -> float:
    units = [plan.smollm2_unit(method, lr) for lr in plan.SMOLLM2_LR_GRID[method]]
    results = ctx.run(units)
    best = min(units, key=lambda u: results[u.name].validation["loss"])
    ctx.lr_table[f"smollm2-{method}"] = {"grid": {f"{u.config.lr:g}": results[u.name].validation["loss"]
                                                  for u in units}, "chosen": best.config.lr,
                                         "metric": "validation loss (lower is better)"}
    return best.config.lr


def base_and_reference(out: Path):
    """(base model, tokenizer, reference rows, base chat-qa test loss) — the loss cached in out."""
    from loralab import data as datasets
    from loralab import models
    from loralab.analysis.forgetting import reference_rows
    from loralab.tasks.batching import encode
    from loralab.train.evaluate import evaluate

    base, tokenizer = models.load("smollm2", "causal_lm")
    texts = [e["text"] for e in datasets.load(REFERENCE, "test", 0, REFERENCE_TEXTS).examples]
    rows = reference_rows(texts, tokenizer, REFERENCE_TOKENS)
    cache = out / "smollm2_base.json"
    if not cache.exists():
        test = encode(datasets.load("chat-qa", "test", 0), tokenizer, 96)
        loss = evaluate(base, test, "causal_lm", 0, tokenizer.pad_token_id, 16, progress=False)["loss"]
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"test_loss": loss}))
    return base, tokenizer, rows, json.loads(cache.read_text())["test_loss"]


def smollm2_forgetting(ctx: Context) -> list[dict]:
    lrs = {m: chosen_lr(ctx, m) for m in ("lora", "full")}
    units = [plan.smollm2_unit("lora", lrs["lora"], 8), plan.smollm2_unit("lora", lrs["lora"], 64),
             plan.smollm2_unit("full", lrs["full"])]
    results = ctx.run(units)
    base, tokenizer, rows, base_loss = base_and_reference(ctx.out / "forgetting")
    out = []
    for unit in units:
        r = results[unit.name]
        out.append({"name": unit.name, "method": unit.config.method, "rank": unit.config.r if unit.config.method != "full"
                    else None, "lr": unit.config.lr, "trainable_params": r.trainable_params,
                    "test_loss": r.test["loss"], "base_test_loss": base_loss, "gain": base_loss - r.test["loss"],
                    "forgetting": forgetting_of(ctx.run_dir(unit), base, rows, tokenizer.pad_token_id)})
    return out


@torch.no_grad()
def forgetting_of(run_dir: Path, base, rows: list[dict], pad_id: int) -> dict:
    """`lm_forgetting` of one finished run's model against the base model."""
    from loralab.analysis.forgetting import lm_forgetting
    from loralab.runs import load_run

    _, tuned, _, _, _ = load_run(run_dir)
    return lm_forgetting(base, tuned, rows, pad_id, 8)
