"""kill -9 trials: `loralab train` killed at a random moment, then started again — is any run left corrupt?

    python bench/kill_trials.py [--trials 50] [--seed 0]

A tiny BERT (the tests' recipe, MiniLM's tokenizer) on 180 rows of the movie data, LoRA r = 4, 3 epochs at
batch 8 with a checkpoint every 2 optimizer steps. One uninterrupted reference run; then per trial a fresh
`--out`, the process killed with SIGKILL after a random delay (uniform over the reference's wall time), and
the same command run again with `--resume` (and, if that is refused, without it). Each trial ends as:

* **identical** — the finished run's adapter equals the reference's bit for bit;
* **refused** — the second command exits 2 with a one-line error (nothing overwritten);
* **corrupt** — anything else: a traceback, a finished run that differs, a run directory no command accepts.

Prints the counts and writes bench/kill_trials_results.json (with the machine).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent


def tiny_setup(root: Path) -> tuple[str, str]:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from loralab import data as datasets
    from loralab import models

    tokenizer = AutoTokenizer.from_pretrained(models.minilm_dir())
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, num_labels=2)
    BertForSequenceClassification(config).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    rows = datasets.load("movie", "train", seed=0, limit=180).examples
    with open(root / "movie.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["text", "label"])
        writer.writeheader()
        writer.writerows({"text": r["text"], "label": ["negative", "positive"][r["label"]]} for r in rows)
    return str(root / "model"), str(root / "movie.csv")


def command(model: str, data: str, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "loralab", "train", "--model", model, "--data", data, "--method", "lora",
            "--rank", "4", "--epochs", "3", "--batch-size", "8", "--max-length", "32", "--threads", "1",
            "--checkpoint-every", "2", "--out", str(out), *extra]


def adapter_bytes(run: Path) -> bytes:
    return (run / "adapter" / "adapter_model.safetensors").read_bytes()


def one_line_error(proc: subprocess.CompletedProcess) -> bool:
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "Warning" not in line]
    return proc.returncode == 2 and "Traceback" not in proc.stderr and len(lines) >= 1


def trial(model: str, data: str, out: Path, delay: float, reference: bytes) -> dict:
    started = subprocess.Popen(command(model, data, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    time.sleep(delay)
    finished_first = started.poll() is not None
    if not finished_first:
        os.killpg(started.pid, signal.SIGKILL)
    started.wait()
    again = subprocess.run(command(model, data, out, "--resume"), capture_output=True, text=True)
    how = "resume"
    if again.returncode == 2 and "Traceback" not in again.stderr:  # refused: start it again without --resume
        again = subprocess.run(command(model, data, out), capture_output=True, text=True)
        how = "restart"
        if again.returncode == 2 and one_line_error(again):
            return {"delay": delay, "outcome": "refused", "how": how, "error": again.stderr.strip()[-300:]}
    if again.returncode == 0 and (out / "adapter" / "adapter_model.safetensors").exists():
        same = adapter_bytes(out) == reference
        return {"delay": delay, "outcome": "identical" if same else "corrupt", "how": how,
                "killed": not finished_first}
    return {"delay": delay, "outcome": "corrupt", "how": how, "returncode": again.returncode,
            "error": again.stderr.strip()[-600:]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(HERE / "kill_trials_results.json"))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model, data = tiny_setup(root)
        start = time.perf_counter()
        subprocess.run(command(model, data, root / "reference"), check=True, capture_output=True)
        wall = time.perf_counter() - start
        reference = adapter_bytes(root / "reference")
        rows = []
        for i in range(args.trials):
            rows.append(trial(model, data, root / f"trial{i}", rng.uniform(0.5, wall), reference))
            counts = {k: sum(r["outcome"] == k for r in rows) for k in ("identical", "refused", "corrupt")}
            print(f"trial {i + 1}/{args.trials}: {rows[-1]['outcome']} (killed after {rows[-1]['delay']:.1f} s) — "
                  f"{counts}", flush=True)
    result = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
              "reference_wall_s": wall, "counts": counts, "trials": rows}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["counts"]))


if __name__ == "__main__":
    main()
