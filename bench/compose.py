"""Combining three r=8 all-linear MiniLM adapters: loralab's compose vs PEFT's add_weighted_adapter.

    python bench/compose.py            # prints a table, writes bench/compose_results.json

Three LoRA adapters (r = 8, alpha = 16, all linear layers of all-MiniLM-L6-v2, random non-zero A and
B) are combined with weights (1, 1, 1), and with (1, −0.5, 0.25):

* loralab ``compose(method="svd", rank=R)`` end to end (read three directories, combine, write one)
  and the combination alone (`combine.svd`), for R = 8 and R = 24 (= Σr, where the sum is exact);
* PEFT ``add_weighted_adapter`` with ``combination_type="svd"`` (a dense SVD per layer) at the same
  ranks, and ``"linear"`` (mixes A's and B's separately, so it adds cross terms B_i·A_j).

Error: per layer, ‖ΔW − Σ w_i·ΔW_i‖_F / ‖Σ w_i·ΔW_i‖_F against the exact dense sum; median and max
over the 36 layers. Times are medians of 5 repeats.
"""

from __future__ import annotations

import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

RANK, ALPHA = 8, 16
OUTPUTS = itertools.count()


def minilm():
    from transformers import BertModel

    from loralab.models import minilm_dir

    return BertModel.from_pretrained(minilm_dir())


def make_adapters(root: Path) -> list[Path]:
    import peft

    paths = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = peft.get_peft_model(minilm(), peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules="all-linear",
                                                              init_lora_weights=False))
        model.save_pretrained(root / f"a{seed}")
        paths.append(root / f"a{seed}")
    return paths


def exact_sum(paths, weights) -> dict[str, torch.Tensor]:
    from loralab.analysis.factors import delta_weight, factors

    fs = [factors(p) for p in paths]
    return {layer: sum(w * delta_weight(f[layer]) for f, w in zip(fs, weights)) for layer in fs[0]}


def errors(deltas: dict[str, torch.Tensor], exact: dict[str, torch.Tensor]) -> dict:
    rel = [float((deltas[k] - exact[k]).norm() / exact[k].norm()) for k in exact]
    return {"median": statistics.median(rel), "max": max(rel)}


def timed(fn, repeats: int = 5):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def ours(paths, weights, rank, root: Path) -> dict:
    from loralab.analysis.factors import delta_weight, factors
    from loralab.compose import adapters, combine

    end_to_end, _ = timed(lambda: adapters.compose(paths, weights, root / f"out{next(OUTPUTS)}", method="svd",
                                                   rank=rank))
    fs = [factors(p) for p in paths]
    math_only, (result, _) = timed(lambda: combine.svd(fs, weights, rank=rank))
    return {"seconds": end_to_end, "math_seconds": math_only,
            "deltas": {k: delta_weight(f) for k, f in result.items()}}


def theirs(paths, weights, rank, combination: str) -> dict:
    import peft

    model = peft.PeftModel.from_pretrained(minilm(), paths[0], adapter_name="a0")
    for i, p in enumerate(paths[1:], 1):
        model.load_adapter(p, adapter_name=f"a{i}")
    names = [f"a{i}" for i in range(len(paths))]
    counter = iter(range(1000))

    def run():
        name = f"mix{next(counter)}"
        kwargs = {"svd_rank": rank} if combination == "svd" else {}
        model.add_weighted_adapter(names, weights, name, combination_type=combination, **kwargs)
        return name

    seconds, name = timed(run)
    deltas = {}
    for module_name, module in model.named_modules():
        if hasattr(module, "lora_A") and name in module.lora_A:
            a, b = module.lora_A[name].weight.double(), module.lora_B[name].weight.double()
            deltas[module_name.removeprefix("base_model.model.")] = module.scaling[name] * b @ a
    return {"seconds": seconds, "deltas": deltas}


def main() -> None:
    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = make_adapters(root)
        for weights in ([1.0, 1.0, 1.0], [1.0, -0.5, 0.25]):
            exact = exact_sum(paths, weights)
            for rank in (8, 24):
                mine = ours(paths, weights, rank, root)
                peft_svd = theirs(paths, weights, rank, "svd")
                rows.append({"weights": weights, "rank": rank, "loralab_s": mine["seconds"],
                             "loralab_math_s": mine["math_seconds"], "peft_svd_s": peft_svd["seconds"],
                             "loralab_error": errors(mine["deltas"], exact),
                             "peft_svd_error": errors(peft_svd["deltas"], exact)})
            linear = theirs(paths, weights, RANK, "linear")
            rows.append({"weights": weights, "rank": RANK, "peft_linear_s": linear["seconds"],
                         "peft_linear_error": errors(linear["deltas"], exact)})
    print(f"{'weights':<18} {'rank':>4} {'loralab s':>9} {'(math)':>7} {'peft svd s':>10} {'ours/peft':>9} "
          f"{'loralab err med/max':>20} {'peft svd err med/max':>21}")
    for r in rows:
        if "loralab_s" in r:
            print(f"{str(r['weights']):<18} {r['rank']:>4} {r['loralab_s']:>9.3f} {r['loralab_math_s']:>7.3f} "
                  f"{r['peft_svd_s']:>10.3f} {r['loralab_s'] / r['peft_svd_s']:>9.3f} "
                  f"{r['loralab_error']['median']:>9.2e}/{r['loralab_error']['max']:.2e} "
                  f"{r['peft_svd_error']['median']:>10.2e}/{r['peft_svd_error']['max']:.2e}")
        else:
            print(f"{str(r['weights']):<18} {r['rank']:>4}  PEFT linear (cross terms): {r['peft_linear_s']:.3f} s, "
                  f"error {r['peft_linear_error']['median']:.2e}/{r['peft_linear_error']['max']:.2e}")
    out = Path(__file__).with_name("compose_results.json")
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
