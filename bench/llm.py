"""The causal-LM path end to end: `loralab train` against HF Trainer + PEFT on the same run, in both orders.

    python bench/llm.py [--max-train 200] [--rounds 2]

SmolLM2-135M-Instruct on chat-qa, LoRA r=8 (alpha 16) on q_proj/v_proj, 1 epoch at batch 8, max length 256,
lr 1e-3 with 6% linear warm-up, the same seeded split and the same tokenisation (chat format, the loss on
the response tokens only) on both sides; validation every epoch, the held-out loss on the test split as
the mean over response tokens on both sides. Each run is a fresh process; wall time is the whole process,
peak RSS is the process's own maximum resident memory, tokens/s the training tokens over the process
wall. HF Trainer runs with its defaults and with ``group_by_length=True``; loralab with its own defaults
(length grouping is on for causal LM). Each round runs the three in one order and then reversed.
Writes bench/llm_results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
ENV = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}


def timed(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start, proc.stdout


def loralab_run(args, out: Path) -> dict:
    cmd = [sys.executable, "-m", "loralab", "train", "--model", "smollm2", "--data", "chat-qa", "--method", "lora",
           "--targets", "q_proj,v_proj", "--rank", "8", "--alpha", "16", "--lr", str(args.lr), "--epochs", "1",
           "--batch-size", "8", "--max-train", str(args.max_train), "--max-eval", str(args.max_eval),
           "--max-length", "256", "--threads", "2", "--out", str(out), "--overwrite"]
    seconds, _ = timed(cmd)
    result = json.loads((out / "result.json").read_text())
    tokens = result["train_tokens"] if "train_tokens" in result else None
    return {"seconds": seconds, "test_loss": result["test"]["loss"], "peak_rss_mb": result["peak_memory_mb"],
            "train_tokens": tokens}


def hf_run(args, group: bool) -> dict:
    cmd = [sys.executable, str(HERE / "hf_peft_lm.py"), "--max-train", str(args.max_train), "--max-eval",
           str(args.max_eval), "--lr", str(args.lr)] + (["--group-by-length"] if group else [])
    seconds, stdout = timed(cmd)
    return {"seconds": seconds, **json.loads(stdout.strip().splitlines()[-1])}


def machine() -> dict:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "native_bf16": "avx512_bf16" in flags or "amx_bf16" in flags, "avx2": "avx2" in flags}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-train", type=int, default=200)
    parser.add_argument("--max-eval", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--rounds", type=int, default=1, help="each round: both orders")
    parser.add_argument("--out", default=str(HERE / "llm_results.json"))
    args = parser.parse_args()
    sides = {"loralab": lambda tmp: loralab_run(args, Path(tmp) / "run"),
             "hf": lambda tmp: hf_run(args, False), "hf_grouped": lambda tmp: hf_run(args, True)}
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for order in (list(sides), list(reversed(sides))):
                for name in order:
                    print(f"{name} ({'first' if name == order[0] else 'later'})", flush=True)
                    runs.append({"side": name, "order": order, **sides[name](tmp)})
    tokens = next(r["train_tokens"] for r in runs if r.get("train_tokens"))
    report = {"machine": machine(), "args": vars(args), "runs": runs}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{machine()}\n{'side':<11} {'order':<28} {'wall s':>7} {'peak RSS MB':>11} {'tokens/s':>8} {'test loss':>9}")
    for r in runs:
        print(f"{r['side']:<11} {' → '.join(r['order']):<28} {r['seconds']:>7.1f} {r['peak_rss_mb']:>11.0f} "
              f"{tokens / r['seconds']:>8.0f} {r['test_loss']:>9.4f}")
    for i in range(0, len(runs), 3):
        block = {r["side"]: r for r in runs[i:i + 3]}
        ours = block["loralab"]
        print(f"order {' → '.join(runs[i]['order'])}: loralab / HF default wall {ours['seconds'] / block['hf']['seconds']:.3f}, "
              f"peak RSS {ours['peak_rss_mb'] / block['hf']['peak_rss_mb']:.3f}; / HF grouped wall "
              f"{ours['seconds'] / block['hf_grouped']['seconds']:.3f}, peak RSS "
              f"{ours['peak_rss_mb'] / block['hf_grouped']['peak_rss_mb']:.3f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
