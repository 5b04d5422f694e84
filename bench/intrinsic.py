"""SAID step time and memory against a full fine-tuning step, on MiniLM (real weights).

    python bench/intrinsic.py [--d 2000] [--steps 10] [--projection fastfood]

Batch 16 × 128 tokens, 2 threads, a sequence-classification head. Step = forward +
backward + AdamW (over θ_d and λ for SAID, over every weight for full FT); the two
alternate step by step. Peak memory: each configuration in a fresh process, the peak RSS
of 3 steps after the model is built, and its rise above the built model. Targets (issue
"Intrinsic-dimension training"): step ≤ 1.5× full FT, memory ≤ 1.3× full FT.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from run import proc_status_mb, reset_peak_rss  # noqa: E402  (bench/run.py)

BATCH, SEQ = 16, 128


def build(method: str, d: int, projection: str):
    from transformers import BertForSequenceClassification

    from loralab.models import minilm_dir
    from loralab.subspace.intrinsic import IntrinsicModel

    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(minilm_dir(), num_labels=2)
    if method == "said":
        model = IntrinsicModel(model, d, projection, said=True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    generator = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(1000, 20000, (BATCH, SEQ), generator=generator),
             "labels": torch.randint(0, 2, (BATCH,), generator=generator)}

    def step() -> None:
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return model, step


def probe(method: str, d: int, projection: str) -> dict:
    torch.set_num_threads(2)
    _, step = build(method, d, projection)
    gc.collect()
    reset_peak_rss()
    loaded = proc_status_mb("VmRSS")
    for _ in range(3):
        step()
    peak = proc_status_mb("VmHWM")
    return {"loaded_mb": loaded, "peak_mb": peak, "step_mb": peak - loaded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--projection", default="fastfood")
    parser.add_argument("--out", default=str(Path(__file__).with_name("intrinsic_results.json")))
    parser.add_argument("--probe", nargs=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(probe(args.probe[0], args.d, args.projection)))
        return
    torch.set_num_threads(2)
    steps = {"full": build("full", args.d, args.projection)[1], "said": build("said", args.d, args.projection)[1]}
    times: dict[str, list[float]] = {k: [] for k in steps}
    for i in range(args.warmup + args.steps):
        for key, step in steps.items():
            start = time.perf_counter()
            step()
            if i >= args.warmup:
                times[key].append(time.perf_counter() - start)
    median = {k: statistics.median(v) for k, v in times.items()}
    memory = {}
    for method in ("full", "said"):
        out = subprocess.run([sys.executable, __file__, "--probe", method, "--d", str(args.d),
                              "--projection", args.projection], capture_output=True, text=True, check=True)
        memory[method] = json.loads(out.stdout.strip().splitlines()[-1])
    result = {"d": args.d, "projection": args.projection, "batch": BATCH, "seq": SEQ, "step_s": median,
              "memory": memory, "torch": torch.__version__,
              "step_ratio": median["said"] / median["full"],
              "peak_ratio": memory["said"]["peak_mb"] / memory["full"]["peak_mb"],
              "step_memory_ratio": memory["said"]["step_mb"] / memory["full"]["step_mb"]}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"MiniLM, batch {BATCH} × {SEQ}, SAID d={args.d} ({args.projection}) vs full fine-tuning")
    print(f"{'':<6} {'step s':>8} {'peak MB':>9} {'step MB':>9}")
    for method in ("full", "said"):
        print(f"{method:<6} {median[method]:>8.3f} {memory[method]['peak_mb']:>9.0f} {memory[method]['step_mb']:>9.0f}")
    print(f"SAID / full: step {result['step_ratio']:.3f} (target ≤ 1.5), peak memory {result['peak_ratio']:.3f} "
          f"(target ≤ 1.3), step memory {result['step_memory_ratio']:.3f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
