"""What the study and the rank benchmark cost, and the least their issues' own designs could cost here.

    python bench/study_compute.py [--steps 8] [--out bench/study_compute_results.json]

1. **Spent** (read from the archives `docs/study/runs.jsonl` and `docs/study/rank/runs.jsonl`): runs, optimizer
   steps, run hours and the median ms per step of each part — the rank benchmark's lr grid, ladder and allocation;
   the study's runs per model and method — and the hours above that part's median pace (a busy machine's share).
2. **The step, measured here:** MiniLM with LoRA r = 8 on query/value (forward, backward, AdamW; one thread, as
   each of the study's two workers runs) at batch 16, 32, 64 and 128 × 14 tokens (TREC's mean length): ms per
   16 examples, and GFLOP/s from torch's FlopCounterMode. The closer ms per 16 examples stays across batch sizes,
   the more compute-bound the step: packing several runs into one batch could not make them much cheaper.
3. **The least compute of the designs the issues ask for**, at the archives' own paces and lengths:
   * issue 32 (rank benchmark, target ≤ 4 h): the fewest units whose one-sided Spearman test reaches power 0.8
     at ρ = 0.8 and α = 0.01 (the registered test); the ladder r ∈ {0, 1, …, 64} × 2 seeds; a 3-value lr grid
     per unit (the fewest that can show an interior optimum); allocation on 4 units × 4 allocations × (3 lrs
     + a second seed). Each run at the ladder's mean steps to its early stop, and — a floor no early-stopping
     rule reaches — at its mean best step (at least the run's own step floor, 300 here);
   * issue 33 (the study plus the benchmark, target ≤ 8 h): the benchmark's least compute plus the study's runs
     at the fewest the issue names (`STUDY_MINIMUM`), each at its family's mean steps and median pace in the
     study archive; claim 8's SmolLM2 runs once at the study's 38 steps (far from converged: a floor) and once
     at the steps SmolLM2 LoRA ran without converging in `docs/study/rank/lm_converge.json` (900: still a floor
     for runs that converge).
   Elapsed = run hours / 2 (two runs at a time on 2 cores); for the benchmark also divided by part 2's packing
   gain (ms per 16 examples at batch 16 over the cheapest batch): what training several runs in one batch
   could save at most.

Writes JSON and prints a table. The archives' runs are from the machines named in them; part 2 is this machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
STUDY_RUNS = ROOT / "docs/study/runs.jsonl"
LM_CONVERGE = ROOT / "docs/study/rank/lm_converge.json"
RANK_RUNS = ROOT / "docs/study/rank/runs.jsonl"
WORKERS = 2
LADDER = (0, 1, 2, 4, 8, 16, 32, 64)
LR_GRID, ALLOCATION_UNITS, ALLOCATIONS = 3, 4, 4
# issue 33's fewest runs per (model, method): what each claim's text names beyond runs another claim already has
# (claims 10 and 11 reuse these seeds; claims 4 and 5 and every second stage are left out, so this is a floor)
STUDY_MINIMUM = {
    "lr grids: 3 values for each of full, LoRA q/v, LoRA all-linear, DoRA, LoRA r=64, on one task":
        {("minilm", "full"): 3, ("minilm", "lora"): 9, ("minilm", "dora"): 3},
    "claim 1: full FT, LoRA q/v and LoRA all-linear, 4 tasks × 3 seeds": {("minilm", "full"): 12, ("minilm", "lora"): 24},
    "claim 3: DoRA, 4 tasks × 3 seeds": {("minilm", "dora"): 12},
    "claim 6: the shuffled-label full-FT null, 4 tasks": {("minilm", "full"): 4},
    "claim 7: LoRA r=64 on one task, 2 independent seeds": {("minilm", "lora"): 2},
    "claim 8: LoRA r=8, r=64 and full FT, 3 lrs × 2 seeds (SmolLM2)": {("smollm2", "lora"): 12, ("smollm2", "full"): 6},
}


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def rank_part(record: dict) -> str:
    name = record["run"]
    part = "lr grid" if "lrgrid" in name else "allocation" if "alloc" in name else "ladder"
    return f"rank {part} ({record['result']['method']})"


def summarise(records: list[dict], part_of) -> dict:
    """Per part: runs, steps, run hours, median ms/step, mean steps, mean best step (at least the run's own step
    floor), hours above the median pace, and the machines the runs ran on."""
    parts, machines = defaultdict(list), defaultdict(set)
    for record in records:
        parts[part_of(record)].append(record["result"])
        machines[part_of(record)].add(record["machine"])
    out = {}
    for part, results in sorted(parts.items()):
        pace = statistics.median(r["wall_time_s"] / r["steps"] for r in results if r["steps"])
        seconds = sum(r["wall_time_s"] for r in results)
        steps = sum(r["steps"] for r in results)
        best = [max(r.get("best_step") or r["steps"], r["config"].get("min_steps") or 0) for r in results]
        out[part] = {
            "runs": len(results), "steps": steps, "run_hours": seconds / 3600, "ms_per_step": 1000 * pace,
            "mean_steps": steps / len(results), "mean_best_step": statistics.mean(best),
            "hours_above_median_pace": (seconds - steps * pace) / 3600, "machines": sorted(machines[part]),
        }
    return out


def study_part(record: dict) -> str:
    return f"study {record['result']['model']} {record['result']['method']}"


def least_rank_benchmark(rank: dict, units: int, steps_key: str) -> dict:
    """Run hours of issue 32's fewest runs (see the module docstring) at the archive's paces."""
    lora, head, alloc = rank["rank ladder (lora)"], rank["rank ladder (head)"], rank["rank allocation (lora)"]

    def hours(part: dict, runs: int) -> float:
        return runs * part[steps_key] * part["ms_per_step"] / 3.6e6

    seeds = 2
    runs = {"ladder, LoRA rungs": (lora, units * (len(LADDER) - 1) * seeds),
            "ladder, head-only rung": (head, units * seeds),
            "lr grid, LoRA, per unit": (lora, units * LR_GRID),
            "allocation": (alloc, ALLOCATION_UNITS * ALLOCATIONS * (LR_GRID + 1))}
    parts = {name: {"runs": n, "run_hours": hours(part, n)} for name, (part, n) in runs.items()}
    total = sum(p["run_hours"] for p in parts.values())
    return {"units": units, "steps": steps_key, "parts": parts, "run_hours": total, "elapsed_hours": total / WORKERS}


def least_study(study: dict, smollm2_steps: float | None = None) -> dict:
    """Run hours of issue 33's fewest runs (`STUDY_MINIMUM`); SmolLM2 runs at ``smollm2_steps`` when given."""
    parts = {}
    for claim, runs in STUDY_MINIMUM.items():
        hours = 0.0
        for (model, method), n in runs.items():
            part = study[f"study {model} {method}"]
            steps = smollm2_steps if model == "smollm2" and smollm2_steps else part["mean_steps"]
            hours += n * steps * part["ms_per_step"] / 3.6e6
        parts[claim] = {"runs": sum(runs.values()), "run_hours": hours}
    total = sum(p["run_hours"] for p in parts.values())
    return {"smollm2_steps": smollm2_steps or study["study smollm2 lora"]["mean_steps"], "parts": parts,
            "run_hours": total, "elapsed_hours": total / WORKERS}


def fewest_units(power_target: float = 0.8) -> dict:
    from loralab.experiments.stats import spearman_power

    powers = {}
    for n in range(8, 30):
        powers[n] = spearman_power(n, rho=0.8, alpha=0.01, simulations=20_000)
        if powers[n] >= power_target:
            return {"units": n, "power": powers[n], "powers": powers}
    raise RuntimeError("no n up to 29 reaches the power target")


def measure_step(batch: int, tokens: int, steps: int) -> dict:
    """Median ms of one LoRA r=8 q/v train step of MiniLM (with a 2-class head), and its FLOPs."""
    from run import build
    from torch.utils.flop_counter import FlopCounterMode

    import loralab as ll

    model = build("minilm")
    ll.inject(model, ll.LoraConfig(r=8, alpha=8, targets=["query", "value"]))
    head = torch.nn.Linear(model.config.hidden_size, 2)
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, model.config.vocab_size, (batch, tokens), generator=generator)
    labels = torch.randint(0, 2, (batch,), generator=generator)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(head(model(input_ids=ids).last_hidden_state[:, 0]), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:
        step()
    times = []
    for _ in range(steps + 2):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    seconds = statistics.median(times[2:])
    flops = counter.get_total_flops()
    return {"batch": batch, "tokens": tokens, "ms_per_step": 1000 * seconds, "ms_per_16_examples": 16000 * seconds / batch,
            "gflop_per_step": flops / 1e9, "gflop_per_s": flops / seconds / 1e9}


def table(results: dict) -> str:
    lines = ["part | runs | steps | run h | ms/step | h above median pace", "---|---:|---:|---:|---:|---:"]
    for part, p in results["spent"].items():
        lines.append(f"{part} | {p['runs']} | {p['steps']} | {p['run_hours']:.2f} | {p['ms_per_step']:.0f} | "
                     f"{p['hours_above_median_pace']:.2f}")
    lines += ["", f"step on this machine ({results['machine']['kind']}, 1 thread):",
              "batch | ms/step | ms per 16 examples | GFLOP/step | GFLOP/s", "---:|---:|---:|---:|---:"]
    for s in results["step"]:
        lines.append(f"{s['batch']} | {s['ms_per_step']:.1f} | {s['ms_per_16_examples']:.1f} | "
                     f"{s['gflop_per_step']:.2f} | {s['gflop_per_s']:.1f}")
    units = results["fewest_units"]
    lines += ["", f"issue 32's least design: {units['units']} units (power {units['power']:.2f} at ρ = 0.8, α = 0.01)"]
    gain = results["packing_gain"]
    for bound in results["least_rank_benchmark"]:
        lines.append(f"  at {bound['steps']}: {bound['run_hours']:.1f} run h = {bound['elapsed_hours']:.1f} h elapsed; "
                     f"packed {gain:.2f}× faster: {bound['elapsed_hours'] / gain:.1f} h (target 4 h)")
    for study in results["least_study"]:
        lines.append(f"issue 33's study claims at their fewest runs, SmolLM2 at {study['smollm2_steps']:.0f} steps: "
                     f"{study['run_hours']:.1f} run h = {study['elapsed_hours']:.1f} h elapsed")
    for bound in results["least_full_study"]:
        lines.append(f"  with the benchmark at {bound['steps']}, SmolLM2 at {bound['smollm2_steps']:.0f} steps: "
                     f"{bound['elapsed_hours']:.1f} h elapsed (target 8 h)")
    return "\n".join(lines)


def main() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from run import finish, machine

    from loralab.experiments.launcher import machine_kind

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8, help="timed train steps per batch size (median)")
    parser.add_argument("--out", default=str(Path(__file__).with_name("study_compute_results.json")))
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.time()
    spent = {**summarise(read(RANK_RUNS), rank_part), **summarise(read(STUDY_RUNS), study_part)}
    units = fewest_units()
    rank_bounds = [least_rank_benchmark(spent, units["units"], key) for key in ("mean_steps", "mean_best_step")]
    steps = [measure_step(batch, 14, args.steps) for batch in (16, 32, 64, 128)]
    per_16 = [s["ms_per_16_examples"] for s in steps]  # the packing gain: batch 16 over the cheapest, per example
    unconverged = max(json.loads(LM_CONVERGE.read_text())["steps"].values())
    studies = [least_study(spent), least_study(spent, unconverged)]
    results = {
        "machine": {**{k: v for k, v in machine().items() if k not in ("batch", "seq", "rank")}, "kind": machine_kind()},
        "spent": spent, "step": steps, "packing_gain": per_16[0] / min(per_16),
        "fewest_units": units, "least_rank_benchmark": rank_bounds, "least_study": studies,
        "least_full_study": [{"steps": b["steps"], "smollm2_steps": s["smollm2_steps"],
                              "elapsed_hours": b["elapsed_hours"] + s["elapsed_hours"]}
                             for s in studies for b in rank_bounds],
    }
    finish(results, args.out, table(results), started)


if __name__ == "__main__":
    main()
