"""kill -9 and disk-full trials: `loralab train` killed at a random moment, or run on a disk that fills up, then
started again — is any run left corrupt?

    python bench/kill_trials.py [--trials 50] [--disk-full 20] [--seed 0]

A tiny BERT (the tests' recipe, MiniLM's tokenizer) on 180 rows of the movie data, LoRA r = 4, 3 epochs at
batch 8 with a checkpoint every 2 optimizer steps. One uninterrupted reference run; then per trial a fresh
`--out`, the process killed with SIGKILL after a random delay (uniform over the reference's wall time), and
the same command run again with `--resume` (and, if that is refused, without it). Each trial ends as:

* **identical** — the finished run's adapter equals the reference's bit for bit;
* **refused** — the second command exits 2 with a one-line error (nothing overwritten);
* **corrupt** — anything else: a traceback, a finished run that differs, a run directory no command accepts.

A disk-full trial (root only: it mounts a small tmpfs) runs the command with `--out` on a tmpfs filled so that
a random number of bytes (up to twice a finished run's size) is left; the first command must end in success or
a one-line error, never a traceback; then the filler is removed and the command run again as above.

Prints the counts and writes bench/kill_trials_results.json (with the machine).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import shutil
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


def run_bytes(run: Path) -> int:
    return sum(f.stat().st_size for f in run.rglob("*") if f.is_file())


def disk_full_trial(model: str, data: str, mount: Path, free: int, reference: bytes) -> dict:
    """Train on a tmpfs with ``free`` bytes left, then free the disk and start again."""
    size = 64 * 2**20
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], check=True)
    try:
        filler = mount / "filler"
        left = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize
        with open(filler, "wb") as handle:  # tmpfs counts whole pages: fill all but `free`
            handle.write(b"\0" * max(0, left - free))
        out = mount / "run"
        first = subprocess.run(command(model, data, out), capture_output=True, text=True)
        if first.returncode not in (0, 2) or "Traceback" in first.stderr:
            return {"free": free, "outcome": "corrupt", "how": "disk full", "error": first.stderr.strip()[-600:]}
        filler.unlink()
        if first.returncode == 0:
            same = adapter_bytes(out) == reference
            return {"free": free, "outcome": "identical" if same else "corrupt", "how": "fitted"}
        again = subprocess.run(command(model, data, out, "--resume"), capture_output=True, text=True)
        how = "resume"
        if again.returncode == 2 and one_line_error(again):
            again = subprocess.run(command(model, data, out), capture_output=True, text=True)
            how = "restart"
            if again.returncode == 2 and one_line_error(again):
                return {"free": free, "outcome": "refused", "how": how, "error": again.stderr.strip()[-300:],
                        "first_error": first.stderr.strip()[-300:]}
        if again.returncode == 0 and (out / "adapter" / "adapter_model.safetensors").exists():
            same = adapter_bytes(out) == reference
            return {"free": free, "outcome": "identical" if same else "corrupt", "how": how,
                    "first_error": first.stderr.strip()[-300:]}
        return {"free": free, "outcome": "corrupt", "how": how, "returncode": again.returncode,
                "error": again.stderr.strip()[-600:]}
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def counted(rows: list[dict]) -> dict:
    return {k: sum(r["outcome"] == k for r in rows) for k in ("identical", "refused", "corrupt")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--disk-full", type=int, default=20, help="disk-full trials (root only; 0 to skip)")
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
            print(f"kill trial {i + 1}/{args.trials}: {rows[-1]['outcome']} (killed after {rows[-1]['delay']:.1f} s) "
                  f"— {counted(rows)}", flush=True)
        full_rows = []
        if args.disk_full and (os.geteuid() != 0 or shutil.which("mount") is None):
            print("disk-full trials skipped: they mount a tmpfs, which needs root", flush=True)
        elif args.disk_full:
            (root / "mnt").mkdir()
            budget = 2 * run_bytes(root / "reference")
            for i in range(args.disk_full):
                full_rows.append(disk_full_trial(model, data, root / "mnt", rng.randrange(budget), reference))
                print(f"disk-full trial {i + 1}/{args.disk_full}: {full_rows[-1]['outcome']} "
                      f"({full_rows[-1]['free']:,} bytes free, {full_rows[-1]['how']}) — {counted(full_rows)}",
                      flush=True)
    result = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
              "reference_wall_s": wall, "counts": counted(rows), "trials": rows,
              "disk_full_counts": counted(full_rows), "disk_full_trials": full_rows}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({"kill": result["counts"], "disk full": result["disk_full_counts"]}))


if __name__ == "__main__":
    main()
