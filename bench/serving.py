"""Serving adapters without merging: unmerged LoRA/DoRA and per-example routing, loralab vs PEFT.

    python bench/serving.py [--models minilm,llama] [--steps 20]

* inference latency at batch 16 and batch 1 (× 128 tokens, no grad): base, LoRA and DoRA (all linear,
  r = 8) unmerged and merged, and PEFT unmerged; ratios to merged;
* routing: 4 LoRA adapters (all linear, r = 8) over a mixed batch of 16 (4 examples each) with
  ``ll.routing``, against one unmerged adapter on the same batch, and PEFT's mixed batch
  (``model(..., adapter_names=[...])``).
Everything alternates call by call; medians. Writes bench/serving_results.json.
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from run import RANK, alternate, bench_parser, build, finish, inputs  # noqa: E402

import loralab as ll  # noqa: E402

NAMES = ["a", "b", "c", "d"]


def randomise(model) -> None:
    """Non-zero B (and a moved magnitude) so no adapter is a no-op."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "lora_magnitude" in name:
                p.add_(0.01 * torch.randn(p.shape, generator=gen))


def ours(base, dora: bool, merged: bool):
    model = copy.deepcopy(base)
    ll.inject(model, ll.LoraConfig(r=RANK, alpha=16, targets="all-linear", dora=dora))
    randomise(model)
    if merged:
        ll.merge(model)
    return model.eval()


def theirs(base, dora: bool, names=("default",)):
    import peft

    cfg = peft.LoraConfig(r=RANK, lora_alpha=16, target_modules="all-linear", use_dora=dora, init_lora_weights=False)
    model = peft.get_peft_model(copy.deepcopy(base), cfg, adapter_name=names[0])
    for name in names[1:]:
        model.add_adapter(name, cfg)
    return model.eval()


def bench_unmerged(shape: str, warmup: int, steps: int) -> dict:
    base = build(shape).eval()
    models = {"base": base}
    for dora in (False, True):
        kind = "dora" if dora else "lora"
        models[f"{kind}/unmerged"], models[f"{kind}/merged"] = ours(base, dora, False), ours(base, dora, True)
        models[f"{kind}/peft"] = theirs(base, dora)
    results = {}
    for batch in (16, 1):
        ids = inputs(base)[:batch]
        with torch.no_grad():
            times = alternate({k: (lambda m=m: m(input_ids=ids)) for k, m in models.items()}, warmup, steps)
        results.update({f"b{batch}/{k}": v for k, v in times.items()})
    return results


def bench_routing(shape: str, warmup: int, steps: int) -> dict:
    base = build(shape).eval()
    model = copy.deepcopy(base)
    for name in NAMES:
        ll.inject(model, ll.LoraConfig(r=RANK, alpha=16, targets="all-linear"), name=name)
    randomise(model)
    model.eval()
    single = ours(base, False, False)
    peft_model = theirs(base, False, NAMES)
    ids = inputs(base)
    route = [NAMES[i % 4] for i in range(ids.shape[0])]

    def routed():
        with ll.routing(model, route):
            return model(input_ids=ids)

    with torch.no_grad():
        return alternate({"routed": routed, "single": lambda: single(input_ids=ids),
                          "peft_mixed": lambda: peft_model(input_ids=ids, adapter_names=route)}, warmup, steps)


def report(results: dict) -> str:
    lines = []
    for shape, res in results["models"].items():
        u, r = res["unmerged"], res["routing"]
        lines.append(f"\n## {shape}: inference, all linear r={RANK} (ms, median)")
        for b in (16, 1):
            for kind in ("lora", "dora"):
                un, me, pe = (u[f"b{b}/{kind}/{k}"] for k in ("unmerged", "merged", "peft"))
                lines.append(f"b{b:<2} {kind}: base {u[f'b{b}/base'] * 1e3:.1f}  merged {me * 1e3:.1f}  unmerged "
                             f"{un * 1e3:.1f}  → unmerged/merged {un / me:.3f}   PEFT unmerged/merged {pe / me:.3f}")
        lines.append(f"routing 4 adapters, batch 16: routed {r['routed'] * 1e3:.1f} ms, one adapter "
                     f"{r['single'] * 1e3:.1f} ms → {r['routed'] / r['single']:.3f}×; PEFT mixed batch "
                     f"{r['peft_mixed'] * 1e3:.1f} ms → ours/peft {r['routed'] / r['peft_mixed']:.3f}")
    return "\n".join(lines)


def main() -> None:
    parser = bench_parser(__doc__, "serving_results.json", steps=20, warmup=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    started, results = time.time(), {"models": {}}
    for shape in args.models.split(","):
        print(f"{shape}: unmerged inference, routing", flush=True)
        results["models"][shape] = {"unmerged": bench_unmerged(shape, args.warmup, args.steps),
                                    "routing": bench_routing(shape, args.warmup, args.steps)}
    finish(results, args.out, report(results), started)


if __name__ == "__main__":
    main()
