"""Claim 9's measurements: the rank probe on every task, its cost, and probe-allocated ranks in training.

Each task is probed at the pretrained weights (`analysis.probe`, 8 batches of 16 training examples,
the same max_length as the runs) with as many threads as one study worker, and its time compared
with one epoch of the task's LoRA r=8 run (seed 0). Allocation: the 96 rank units of uniform r=8 on
the 12 query/value layers are re-divided in proportion to each layer's probed gradient rank
(`allocate_ranks`) and trained with the same recipe; compared with uniform r=8 seed by seed.
"""

from __future__ import annotations

import json
import statistics

import torch

from loralab.adapters.config import exact_pattern
from loralab.experiments import study_plan as plan
from loralab.experiments.context import Context
from loralab.experiments.stats import mean_ci, paired

PROBE_BATCHES, PROBE_BATCH_SIZE = 8, 16


def probe_tasks(ctx: Context) -> dict[str, dict]:
    from loralab.commands.probe import ProbeConfig, run_probe

    found = {}
    for task in ctx.tasks:
        cache = ctx.out / "probe" / f"{task}.json"
        if not cache.exists():
            threads = torch.get_num_threads()
            torch.set_num_threads(getattr(ctx.executor, "threads", None) or threads)
            try:
                result = run_probe(ProbeConfig(model=ctx.sizes.model, data=task, batches=PROBE_BATCHES,
                                               batch_size=PROBE_BATCH_SIZE, max_length=ctx.sizes.max_length, seed=0))
            finally:
                torch.set_num_threads(threads)
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(result, indent=1))
        found[task] = json.loads(cache.read_text())
        run = ctx.run([plan.lora_unit(task, ctx.sizes, 0, ctx.lr("lora"))])
        epoch = next(iter(run.values())).wall_time_s / ctx.sizes.epochs
        found[task].update(epoch_seconds=epoch, cost_fraction=found[task]["seconds"] / epoch)
    return found


def allocated_vs_uniform(ctx: Context, probes: dict[str, dict]) -> dict:
    from loralab.analysis.probe import allocate_ranks

    patterns = {task: allocate_ranks({path: ranks["gradient"] for path, ranks in probes[task]["layers"].items()},
                                     budget=8 * len(probes[task]["layers"])) for task in ctx.tasks}
    pairs = {(task, seed): (plan.lora_unit(task, ctx.sizes, seed, ctx.lr("lora")),
                            plan.lora_unit(task, ctx.sizes, seed, ctx.lr("lora"),
                                           rank_pattern=exact_pattern(patterns[task]), tag="-probe"))
             for task in ctx.tasks for seed in ctx.seeds}
    results = ctx.run([unit for pair in pairs.values() for unit in pair])  # one batch: both workers stay busy
    uniform, allocated, per_task = {}, {}, {}
    for (task, seed), (flat, probed) in pairs.items():
        uniform.setdefault(task, {})[seed] = results[flat.name].test["accuracy"]
        allocated.setdefault(task, {})[seed] = results[probed.name].test["accuracy"]
    for task in ctx.tasks:
        per_task[task] = paired(allocated[task], uniform[task])
    pooled = mean_ci([v for t in ctx.tasks for v in per_task[t]["values"]])
    return {"patterns": patterns, "per_task": per_task, "pooled": pooled,
            "ranks_spread": {t: statistics.pstdev(p.values()) for t, p in patterns.items()}}
