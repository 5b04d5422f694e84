"""The rank probe's cost against one epoch of training on each task's whole training split.

    python bench/probe_cost.py [--tasks movie,tweets,trec,sms] [--threads 2]

For each task, in this process and with the same thread count:

* `loralab.analysis.probe.run_probe` with the study's settings (8 batches of 16 training examples,
  max_length 64, the head fitted on frozen features first): its wall time, loading included;
* one epoch of the study's LoRA recipe (r = 8, alpha = 16 on query/value, lr 4e-3, batch 16,
  max_length 64) over the task's full training split — not the study's 800-example cap — timed as
  the run's wall time, loading and one validation pass (300 examples) included.

The study measured the same fraction against its 800-example epochs (claim 9: 17–20%); the probe's
cost is fixed by its 128 examples, an epoch grows with the training set. Writes
bench/probe_cost_results.json and prints a table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def probe_seconds(task: str) -> dict:
    from loralab.analysis.probe import ProbeConfig, run_probe

    result = run_probe(ProbeConfig(model="minilm", data=task, batches=8, batch_size=16, max_length=64, seed=0))
    return {"seconds": result["seconds"], "examples": result["examples"], "predicted_rank": result["predicted_rank"]}


def epoch_seconds(task: str, out: Path) -> dict:
    from loralab.train.config import TrainConfig
    from loralab.train.loop import train

    cfg = TrainConfig(model="minilm", data=task, method="lora", targets="query,value", lr=4e-3,
                      epochs=1, batch_size=16, max_length=64, max_eval=300, seed=0, out=str(out))
    started = time.time()
    result = train(cfg, progress=False)
    return {"seconds": time.time() - started, "train_examples": result.train_examples, "steps": result.steps,
            "validation_accuracy": result.validation["accuracy"]}


def main() -> None:
    from run import finish

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="movie,tweets,trec,sms")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).with_name("probe_cost_results.json")))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started, results = time.time(), {"threads": args.threads, "tasks": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks.split(","):
            print(f"{task}: probe, then one epoch", flush=True)
            probe = probe_seconds(task)
            epoch = epoch_seconds(task, Path(tmp) / task)
            results["tasks"][task] = {"probe": probe, "epoch": epoch, "fraction": probe["seconds"] / epoch["seconds"]}
    lines = [f"{'task':<7} {'probe s':>8} {'train examples':>15} {'epoch s':>8} {'probe/epoch':>12}"]
    for task, r in results["tasks"].items():
        lines.append(f"{task:<7} {r['probe']['seconds']:>8.1f} {r['epoch']['train_examples']:>15} "
                     f"{r['epoch']['seconds']:>8.1f} {r['fraction']:>12.3f}")
    finish(results, args.out, "\n".join(lines), started)


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    main()
