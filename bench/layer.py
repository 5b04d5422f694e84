"""One adapted layer, forward + backward: where the LoRA step's time over the floor goes.

    python bench/layer.py                  # MiniLM's three layer shapes and GPT-2's c_attn
    python bench/layer.py --shapes 384x1536 --tokens 2048
    python bench/layer.py --precision bf16 --dropout 0.05   # under bf16 autocast, plus dropout rows

Per shape (tokens × in → out, r = 8, 2 threads), alternating step by step, median of N:

* floor: the frozen layer with the gradient flowing to its input (two GEMMs);
* loralab LoRA and DoRA (`LoraLinearFunction`, `DoraLinearFunction`) and PEFT's LoRA and DoRA layers;
* with ``--dropout p``, the same four with dropout p on the adapter input;
* with ``--precision bf16``, every forward under ``torch.autocast("cpu", dtype=torch.bfloat16)``;
* the achieved GFLOP/s of the frozen GEMMs (2·2·T·in·out FLOPs) and of the rank-r work LoRA
  adds (2·T·r·(3·in + 3·out) FLOPs: A·x, B·h, Bᵀ·g, (g·B)·A, ∂A, ∂B), which says whether the
  overhead is the arithmetic or the skinny products' efficiency.

Prints a table, writes bench/layer_results.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn

import loralab as ll

RANK = 8


def adapted(in_features: int, out_features: int, lib: str, dora: bool = False, dropout: float = 0.0) -> nn.Module:
    """A one-layer model holding Linear(in, out) with an r=8 adapter whose B is non-zero."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(in_features, out_features))
    if lib == "loralab":
        ll.inject(model, ll.LoraConfig(r=RANK, alpha=16, targets=["0"], dora=dora, dropout=dropout))
        with torch.no_grad():
            model[0].lora_B["default"].normal_(std=0.01)
    elif lib == "peft":
        import peft

        model = peft.get_peft_model(model, peft.LoraConfig(r=RANK, lora_alpha=16, target_modules=["0"],
                                                           use_dora=dora, lora_dropout=dropout,
                                                           init_lora_weights=False))
    else:
        model.requires_grad_(False)
    return model


def step_fn(model: nn.Module, x: torch.Tensor, grad: torch.Tensor, bf16: bool = False):
    """Forward + backward with the gradient flowing to the input, as inside a network; with bf16 the
    forward runs under CPU bf16 autocast and the backward outside it (as HF Trainer does)."""

    def step() -> None:
        inp = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(inp)
        out.float().backward(grad)
        for param in model.parameters():
            param.grad = None

    return step


def bench_shape(tokens: int, in_features: int, out_features: int, steps: int, bf16: bool = False,
                dropout: float = 0.0) -> dict:
    x, grad = torch.randn(tokens, in_features), torch.randn(tokens, out_features)
    runs = {"floor": adapted(in_features, out_features, "frozen")}
    for p in (0.0, dropout) if dropout > 0 else (0.0,):
        suffix = f" p={p:g}" if p > 0 else ""
        for method, dora in (("LoRA", False), ("DoRA", True)):
            for lib in ("loralab", "peft"):
                runs[f"{lib} {method}{suffix}"] = adapted(in_features, out_features, lib, dora=dora, dropout=p)
    fns = {name: step_fn(model, x, grad, bf16) for name, model in runs.items()}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(3):
        for fn in fns.values():
            fn()
    for _ in range(steps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    frozen_flops = 2 * (2 * tokens * in_features * out_features)  # W·x and g·W
    lora_flops = 2 * tokens * RANK * (3 * in_features + 3 * out_features)  # six rank-r products
    extra = ms["loralab LoRA"] - ms["floor"]
    return {
        "tokens": tokens, "in": in_features, "out": out_features, "ms": ms,
        "frozen_gflops": frozen_flops / ms["floor"] / 1e6,
        "lora_extra_ms": extra,
        "lora_extra_gflops": lora_flops / extra / 1e6 if extra > 0 else float("nan"),
        "lora_flops_fraction": lora_flops / frozen_flops,
    }


def ratio_rows(results: list, dropout: float) -> dict:
    """Per shape, in the order given: loralab/PEFT for LoRA and DoRA, and with dropout each library's
    step with dropout over its own step without."""
    rows = {}
    suffixes = ("", f" p={dropout:g}") if dropout > 0 else ("",)
    for method in ("LoRA", "DoRA"):
        for suffix in suffixes:
            rows[f"loralab/peft {method}{suffix}"] = [r["ms"][f"loralab {method}{suffix}"] / r["ms"][f"peft {method}{suffix}"]
                                                     for r in results]
        if dropout > 0:
            for lib in ("loralab", "peft"):
                with_drop, without = f"{lib} {method}{suffixes[1]}", f"{lib} {method}"
                rows[f"{without} p={dropout:g} / p=0"] = [r["ms"][with_drop] / r["ms"][without] for r in results]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="384x384,384x1536,1536x384,768x2304", help="in x out, comma-separated")
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16: forward under CPU autocast")
    parser.add_argument("--dropout", type=float, default=0.0, help="also time every adapter with this dropout")
    parser.add_argument("--out", default="bench/layer_results.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    results = []
    for shape in args.shapes.split(","):
        in_features, out_features = (int(v) for v in shape.split("x"))
        results.append(bench_shape(args.tokens, in_features, out_features, args.steps,
                                   args.precision == "bf16", args.dropout))
    names = list(results[0]["ms"])
    print(f"tokens {args.tokens}, r {RANK}, {args.precision}; median ms of fwd+bwd (gradient to the input)")
    print(f"{'in→out':>10} " + " ".join(f"{n:>13}" for n in names)
          + f" {'LoRA−floor':>10} {'LoRA flops/floor':>16} {'frozen GF/s':>11} {'rank-r GF/s':>11}")
    for r in results:
        print(f"{r['in']:>4}→{r['out']:<5} " + " ".join(f"{r['ms'][n]:13.2f}" for n in names)
              + f" {r['lora_extra_ms']:10.2f} {r['lora_flops_fraction']:16.3f} {r['frozen_gflops']:11.0f}"
              f" {r['lora_extra_gflops']:11.0f}")
    ratios = ratio_rows(results, args.dropout)
    for label, values in ratios.items():
        print(f"{label:>34}: " + "  ".join(f"{v:.3f}" for v in values))
    with open(args.out, "w") as handle:
        json.dump({"torch": torch.__version__, "threads": 2, "rank": RANK, "precision": args.precision,
                   "dropout": args.dropout, "results": results, "ratios": ratios}, handle, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
