"""bf16 autocast and dropout, loralab vs PEFT, in one run: prints ratios, writes bench/precision_results.json.

    python bench/precision.py [--models minilm,llama] [--steps 10]

* bf16: the train step of LoRA and DoRA (q/v and all linear) in fp32 and under
  ``torch.autocast("cpu", dtype=torch.bfloat16)`` (what HF Trainer's bf16=True does), both libraries,
  every configuration stepped round-robin; bf16 both on the default attention (SDPA) and on eager
  attention, which `loralab train --precision bf16` loads (`loralab.models.attention_for`);
* dropout 0.05 (all linear, LoRA and DoRA): step time against the same config without dropout, and
  peak step memory, each in a fresh process (`run.memory_probe`).
Batch 16 × 128 tokens, r = 8, 2 threads; medians of ``--steps`` after 2 warm-up steps.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from run import RANK, Trainer, alternate, bench_parser, build, exact_peak_env, finish, inputs, targets  # noqa: E402

import loralab as ll  # noqa: E402


def adapt(model, shape: str, config: str, lib: str, dropout: float = 0.0):
    dora = config.startswith("dora")
    if lib == "loralab":
        ll.inject(model, ll.LoraConfig(r=RANK, alpha=16, targets=targets(shape, config), dora=dora, dropout=dropout))
        return model
    import peft

    return peft.get_peft_model(model, peft.LoraConfig(r=RANK, lora_alpha=16, target_modules=targets(shape, config),
                                                       use_dora=dora, lora_dropout=dropout, init_lora_weights=False))


class AutocastTrainer(Trainer):
    """`run.Trainer` whose forward runs under bf16 autocast (the backward outside it, as in HF Trainer)."""

    def __init__(self, *args, bf16: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.bf16 = bf16

    def step(self) -> None:
        context = torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        with context:
            out = self.model(input_ids=self.ids).last_hidden_state
        out.float().square().mean().backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


PRECISIONS = {"fp32": (False, None), "bf16": (True, None), "bf16-eager": (True, "eager")}


def bench_bf16(shape: str, warmup: int, steps: int) -> dict:
    """Each config in fp32 and bf16 on the default attention (SDPA), and in bf16 on eager attention —
    what `loralab train --precision bf16` loads (`models.attention_for`): CPU SDPA's bf16 backward is slow."""
    bases = {attention: build(shape, attention) for attention in (None, "eager")}
    ids = inputs(bases[None])
    fns = {}
    for config in ("lora-qv", "lora-all", "dora-qv", "dora-all"):
        for lib in ("loralab", "peft"):
            for precision, (bf16, attention) in PRECISIONS.items():
                model = adapt(copy.deepcopy(bases[attention]), shape, config, lib)
                fns[f"{config}/{lib}/{precision}"] = AutocastTrainer(model, ids, bf16=bf16).step
    return alternate(fns, warmup, steps)


def bench_dropout(shape: str, warmup: int, steps: int) -> dict:
    base = build(shape)
    ids = inputs(base)
    fns = {f"{config}/{lib}/p{p}": Trainer(adapt(copy.deepcopy(base), shape, config, lib, p), ids).step
           for config in ("lora-all", "dora-all") for lib in ("loralab", "peft") for p in (0.0, 0.05)}
    return alternate(fns, warmup, steps)


def dropout_memory(shape: str) -> dict:
    """Peak step memory of each dropout config in a fresh process (see --memory-probe), with the malloc
    settings of `run.exact_peak_env`."""
    results = {}
    for config in ("lora-all", "dora-all"):
        for lib in ("loralab", "peft"):
            for p in (0.0, 0.05):
                out = subprocess.run([sys.executable, __file__, "--memory-probe", shape, config, lib, str(p)],
                                     capture_output=True, text=True, check=True, env=exact_peak_env())
                results[f"{config}/{lib}/p{p}"] = json.loads(out.stdout.strip().splitlines()[-1])
    return results


def memory_probe(shape: str, config: str, lib: str, p: str) -> dict:
    from run import proc_status_mb, reset_peak_rss

    torch.set_num_threads(2)
    base = build(shape)
    trainer = Trainer(adapt(base, shape, config, lib, float(p)), inputs(base))
    with torch.no_grad():
        for param in trainer.model.parameters():
            param.sum()
    reset_peak_rss()
    loaded = proc_status_mb("VmRSS")
    for _ in range(3):
        trainer.step()
    return {"step_mb": proc_status_mb("VmHWM") - loaded}


def report(results: dict) -> str:
    lines = []
    for shape, res in results["models"].items():
        t = res.get("bf16")
        if t is not None:
            lines.extend(bf16_lines(shape, t))
        if "dropout" not in res:
            continue
        d, m = res["dropout"], res.get("dropout_memory", {})
        lines.append(f"\n## {shape}: dropout 0.05 vs none (all linear)")
        for c in ("lora-all", "dora-all"):
            for lib in ("loralab", "peft"):
                ratio = d[f"{c}/{lib}/p0.05"] / d[f"{c}/{lib}/p0.0"]
                mem = (m[f"{c}/{lib}/p0.05"]["step_mb"] / m[f"{c}/{lib}/p0.0"]["step_mb"]) if m else float("nan")
                lines.append(f"{c:<9} {lib:<8} step {d[f'{c}/{lib}/p0.0']:.3f} → {d[f'{c}/{lib}/p0.05']:.3f} s "
                             f"({ratio:.3f}×)   step memory {mem:.3f}×")
    return "\n".join(lines)


def bf16_lines(shape: str, t: dict) -> list:
    """The bf16 table of one model: every config in fp32, bf16 (SDPA) and bf16e (eager attention)."""
    lines = [f"\n## {shape}: bf16 autocast (step s, median; fp32 and bf16 on SDPA, bf16e on eager attention)",
             f"{'config':<9} {'lib':<8} {'fp32':>7} {'bf16':>7} {'bf16e':>7} {'bf16/fp32':>9} "
             f"{'bf16e/fp32':>10} {'ours/peft bf16':>14} {'ours/peft bf16e':>15}"]
    for c in ("lora-qv", "lora-all", "dora-qv", "dora-all"):
        for lib in ("loralab", "peft"):
            fp32, bf16, eager = (t[f"{c}/{lib}/{p}"] for p in PRECISIONS)
            vs_peft = (f"{bf16 / t[f'{c}/peft/bf16']:>14.3f} {eager / t[f'{c}/peft/bf16-eager']:>15.3f}"
                       if lib == "loralab" else "")
            lines.append(f"{c:<9} {lib:<8} {fp32:>7.3f} {bf16:>7.3f} {eager:>7.3f} {bf16 / fp32:>9.3f} "
                         f"{eager / fp32:>10.3f} {vs_peft}")
    return lines


def main() -> None:
    parser = bench_parser(__doc__, "precision_results.json", steps=10, warmup=2)
    parser.add_argument("--skip", default="", help="comma-separated: bf16, dropout, memory")
    parser.add_argument("--memory-probe", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        print(json.dumps(memory_probe(*args.memory_probe)))
        return
    torch.set_num_threads(2)
    started, results = time.time(), {"models": {}}
    for shape in args.models.split(","):
        res = {}
        if "bf16" not in args.skip:
            print(f"{shape}: bf16", flush=True)
            res["bf16"] = bench_bf16(shape, args.warmup, args.steps)
        if "dropout" not in args.skip:
            print(f"{shape}: dropout", flush=True)
            res["dropout"] = bench_dropout(shape, args.warmup, args.steps)
        if "memory" not in args.skip and "dropout" not in args.skip:
            res["dropout_memory"] = dropout_memory(shape)
        results["models"][shape] = res
    finish(results, args.out, report(results), started)


if __name__ == "__main__":
    main()
