"""The open rows of issue 16, each measured in several fresh processes: one process can carry a bias.

    python bench/spread.py [--processes 5] [--rows dropout,bf16-qv,unmerged]

The same 384 × 384 layer measured ours/PEFT 1.161 in one process and 0.767 in the next (300 alternated steps
each): where a process's buffers land can favour one configuration throughout it. So each row here is a
ratio measured inside one process (its two sides alternated call by call), repeated in ``--processes``
fresh processes; the table gives every process's value and the median.

* dropout: loralab's train step with dropout 0.05 over the same step without (MiniLM, LoRA and DoRA on
  all linear layers; target ≤ 1.05);
* bf16-qv: loralab's LoRA q/v train step over PEFT's, both under bf16 autocast on eager attention (what
  ``--precision bf16`` runs), MiniLM and the 6-layer Llama (target ≤ 1.0);
* unmerged: inference with the adapter unmerged over merged, LoRA and DoRA on all linear layers, batch 16
  and batch 1 × 128 tokens (targets ≤ 1.03 / 1.05 at batch 16, ≤ 1.05 / 1.10 at batch 1).

Batch 16 × 128 tokens, r = 8, 2 threads. Writes bench/spread_results.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from precision import AutocastTrainer, adapt  # noqa: E402
from run import Trainer, alternate, build, inputs  # noqa: E402
from serving import ours  # noqa: E402

ROWS = ("dropout", "bf16-qv", "unmerged")
TARGETS = {"dropout lora-all": 1.05, "dropout dora-all": 1.05, "bf16-qv minilm": 1.0, "bf16-qv llama": 1.0,
           "unmerged b16 lora": 1.03, "unmerged b16 dora": 1.05, "unmerged b1 lora": 1.05, "unmerged b1 dora": 1.10}


def dropout_ratios(steps: int) -> dict:
    base = build("minilm")
    ids = inputs(base)
    ratios = {}
    for config in ("lora-all", "dora-all"):
        fns = {p: Trainer(adapt(copy.deepcopy(base), "minilm", config, "loralab", p), ids).step for p in (0.0, 0.05)}
        times = alternate(fns, 2, steps)
        ratios[f"dropout {config}"] = times[0.05] / times[0.0]
    return ratios


def bf16_qv_ratios(steps: int) -> dict:
    ratios = {}
    for shape in ("minilm", "llama"):
        base = build(shape, "eager")
        ids = inputs(base)
        fns = {lib: AutocastTrainer(adapt(copy.deepcopy(base), shape, "lora-qv", lib), ids, bf16=True).step
               for lib in ("loralab", "peft")}
        times = alternate(fns, 2, steps if shape == "minilm" else max(2, steps * 2 // 3))
        ratios[f"bf16-qv {shape}"] = times["loralab"] / times["peft"]
    return ratios


def unmerged_ratios(steps: int) -> dict:
    base = build("minilm").eval()
    models = {}
    for kind in ("lora", "dora"):
        models[f"{kind}/unmerged"], models[f"{kind}/merged"] = ours(base, kind == "dora", False), ours(base, kind == "dora", True)
    ratios = {}
    for batch, calls in ((16, steps), (1, steps * 10)):
        ids = inputs(base)[:batch]
        with torch.no_grad():
            times = alternate({k: (lambda m=m: m(input_ids=ids)) for k, m in models.items()}, 3, calls)
        for kind in ("lora", "dora"):
            ratios[f"unmerged b{batch} {kind}"] = times[f"{kind}/unmerged"] / times[f"{kind}/merged"]
    return ratios


MEASURE = {"dropout": dropout_ratios, "bf16-qv": bf16_qv_ratios, "unmerged": unmerged_ratios}


def one_process(row: str, steps: int) -> dict:
    """Run ``row`` in a fresh interpreter and return its ratios."""
    cmd = [sys.executable, __file__, "--one", row, "--steps", str(steps)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(values: dict) -> str:
    lines = [f"{'row':<20} {'median':>7} {'target':>7}  met  per process"]
    for name, ratios in values.items():
        median = statistics.median(ratios)
        target = TARGETS[name]
        lines.append(f"{name:<20} {median:7.3f} {target:7.2f}  {'yes' if median <= target else 'no ':<3}  "
                     + " ".join(f"{r:.3f}" for r in ratios))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=5)
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated: " + ", ".join(ROWS))
    parser.add_argument("--steps", type=int, default=12, help="alternated train steps or batch-16 calls per process")
    parser.add_argument("--out", default=str(Path(__file__).with_name("spread_results.json")))
    parser.add_argument("--one", choices=ROWS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.one:
        print(json.dumps(MEASURE[args.one](args.steps)))
        return
    started, values = time.time(), {}
    for row in args.rows.split(","):
        if row not in MEASURE:
            parser.error(f"unknown row {row!r}; choose from {', '.join(ROWS)}")
        for index in range(args.processes):
            print(f"{row}: process {index + 1}/{args.processes}", flush=True)
            for name, ratio in one_process(row, args.steps).items():
                values.setdefault(name, []).append(ratio)
    results = {"processes": args.processes, "steps": args.steps, "ratios": values,
               "medians": {k: statistics.median(v) for k, v in values.items()}, "targets": TARGETS,
               "seconds": time.time() - started}
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(table(values))
    print(f"\nwrote {args.out} ({results['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
