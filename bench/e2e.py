"""End to end: `loralab train` against HF Trainer + PEFT on the same run, fp32 and bf16.

    python bench/e2e.py [--max-train 3000] [--epochs 2]

The quick study's LoRA arm: all-MiniLM-L6-v2 on movie, LoRA r=8 (alpha 16) on query/value plus the
trained head, lr 2e-3 with 6% linear warm-up and linear decay, batch 16, max length 64, the same
seeded train/validation/test split (`loralab.data`), validation every epoch, test at the end. Each
run is a fresh process; wall time is the whole process (model load, tokenisation, training,
evaluation). loralab runs with ``--group-by-length``; HF Trainer runs both without (its default)
and with ``group_by_length=True``. Writes bench/e2e_results.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent


def timed_process(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={"TOKENIZERS_PARALLELISM": "false",
                                                                    **__import__("os").environ})
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start, proc.stdout


def loralab_run(args, precision: str, group: bool, out: Path) -> dict:
    cmd = [sys.executable, "-m", "loralab", "train", "--model", "minilm", "--data", "movie", "--method", "lora",
           "--targets", "query,value", "--r", "8", "--alpha", "16", "--lr", "2e-3", "--epochs", str(args.epochs),
           "--batch-size", "16", "--max-train", str(args.max_train), "--max-length", "64", "--precision", precision,
           "--threads", "2", "--out", str(out)] + (["--group-by-length"] if group else [])
    seconds, _ = timed_process(cmd)
    result = json.loads((out / "result.json").read_text())
    return {"seconds": seconds, "test_accuracy": result["test"]["accuracy"], "best_epoch": result["best_epoch"]}


def hf_run(args, precision: str, group: bool) -> dict:
    cmd = [sys.executable, str(HERE / "hf_peft_train.py"), "--max-train", str(args.max_train), "--epochs",
           str(args.epochs), "--precision", precision] + (["--group-by-length"] if group else [])
    seconds, stdout = timed_process(cmd)
    return {"seconds": seconds, **json.loads(stdout.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-train", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", default=str(HERE / "e2e_results.json"))
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "bf16"):
            print(f"{precision}: loralab", flush=True)
            rows[f"loralab/{precision}"] = loralab_run(args, precision, True, Path(tmp) / precision)
            for group in (False, True):
                print(f"{precision}: HF Trainer + PEFT (group_by_length={group})", flush=True)
                rows[f"hf/{precision}/{'grouped' if group else 'default'}"] = hf_run(args, precision, group)
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\n{'run':<22} {'wall s':>7} {'test acc':>8}")
    for key, row in rows.items():
        print(f"{key:<22} {row['seconds']:>7.1f} {row['test_accuracy']:>8.4f}")
    for precision in ("fp32", "bf16"):
        ours = rows[f"loralab/{precision}"]["seconds"]
        print(f"{precision}: loralab / HF default {ours / rows[f'hf/{precision}/default']['seconds']:.3f}, "
              f"/ HF grouped {ours / rows[f'hf/{precision}/grouped']['seconds']:.3f}")
    fp32 = rows["hf/fp32/default"]["seconds"]
    print(f"bf16 loralab / fp32 HF default: {rows['loralab/bf16']['seconds'] / fp32:.3f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
