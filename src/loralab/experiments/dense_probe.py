"""The rank benchmark's predictors on the dense pilot's units (`dense_pilot`), before any training, against the
planted truth: rank k in the last layer's value projection, 0 in every other query/value projection.

The predictors are `analysis.rank_predictors`' (the benchmark's primary, ``gradient_effective_rank``, among them),
computed as `commands.probe.task_probe` computes them for a classification task — at the pretrained weights, on the
first 256 training texts in batches of 8 — but with the pilot's loss: the mean squared error between the model's
pooled output and the teacher's (no head to fit). The null keeps each text's base output and gives it another text's
planted change, t'(x) = f₀(x) + (t − f₀)(x′), 3 shuffles (`shuffled_changes`): targets as far from the model as the
real ones, unrelated to the input. (Shuffling the targets themselves would put every null target as far away as two
texts' features, a far larger gradient than the real one's: no signal would ever clear it.)

    python -c "from loralab.experiments.dense_probe import run; run()"

`planted_energy` says how many directions the planted change really occupies on these texts: the eigenvalues of
ΔW·Σ_h·ΔWᵀ (Σ_h the planted layer's uncentred input second moment over the probe's tokens) — k equal values only if
the k random input directions V carried equal energy — and of the pooled outputs' change, E[(t − f₀)(t − f₀)ᵀ].

`centred_gain` is a post-hoc reading of the pilot (exploratory, added after its result): g(r) measured from the base
model shifted by the training texts' mean change, as if r = 0 had a trained output bias — the rung the pilot lacked.

`figure` draws the pilot's gain curves g(r) beside the registered benchmark's (docs/study/rank/figures/dense_gain.png).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from loralab.experiments import dense_pilot as dp
from loralab.io.atomic import atomic_write_json

EXAMPLES, BATCH, SHUFFLES = 256, 8, 3


class PooledMSE(nn.Module):
    """``forward(**batch)`` → an object whose ``loss`` is mean((pooled output − labels)²): the dense pilot's loss in
    the form `rank_predictors.gradient_moment` calls (``labels``: the teacher's pooled outputs, batch × hidden)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, labels: torch.Tensor, **inputs) -> SimpleNamespace:
        return SimpleNamespace(loss=((self.encoder(**inputs).pooler_output - labels) ** 2).mean())


def probe_batches(tokenizer, texts: list[str], wanted: torch.Tensor) -> list[dict]:
    batches = []
    for start in range(0, len(texts), BATCH):
        encoded = tokenizer(texts[start:start + BATCH], padding=True, truncation=True, max_length=dp.MAX_LENGTH,
                            return_tensors="pt")
        batches.append({**encoded, "labels": wanted[start:start + BATCH]})
    return batches


def shuffled_changes(batches: list[dict], base: torch.Tensor, seed: int) -> list[dict]:
    """The batches with each text's target replaced by its base output ``base`` (N × hidden, the batches' texts in
    order) plus the planted change t − f₀ of another text, permuted across all of them."""
    generator = torch.Generator().manual_seed(seed)
    change = torch.cat([b["labels"] for b in batches]) - base
    change = change[torch.randperm(len(change), generator=generator)]
    out, start = [], 0
    for b in batches:
        n = len(b["labels"])
        out.append({**b, "labels": base[start:start + n] + change[start:start + n]})
        start += n
    return out


def probe(k: int, root: Path, seed: int = 0, centred: bool = False) -> dict:
    """{"layers": every predictor per query/value projection, "task": their task-level values, "planted": the
    planted layer's name, "truth": {layer: planted rank}}. ``centred``: with the output bias first fitted (benchmark
    v2) — each target moved by the mean change t − f₀ over the probe's texts, the loss an adapter faces once r = 0
    (the bias) has taken the shared shift."""
    from loralab import models
    from loralab.analysis import rank_predictors as rp

    started = time.time()
    torch.manual_seed(seed)
    found = dp.targets(k, root)
    texts, wanted, base = dp.splits()["train"][:EXAMPLES], found["train"][:EXAMPLES], found["base_train"][:EXAMPLES]
    if centred:
        wanted = wanted - (wanted - base).mean(0)
    model, tokenizer = models.load(dp.MODEL, "classification", num_labels=2)
    model.eval()
    planted = dp.planted_layer(model)
    loss = PooledMSE(getattr(model, model.base_model_prefix))
    modules = {n: m for n, m in model.named_modules() if n.endswith(("attention.self.query", "attention.self.value"))}
    model.requires_grad_(False)
    for module in modules.values():
        module.weight.requires_grad_(True)
    batches = probe_batches(tokenizer, texts, wanted)
    recorders = {p: rp.LayerRecorder(m) for p, m in modules.items()}
    moments, sums = rp.gradient_moment(loss, modules, batches, recorders)
    for rec in recorders.values():
        rec.remove()
    nulls = [rp.gradient_moment(loss, modules, shuffled_changes(batches, base, seed + 1 + i))[0] for i in range(SHUFFLES)]
    layers = rp.layer_predictors(recorders, moments, nulls, sums)
    second_moment = recorders[planted].second_moment / recorders[planted].tokens
    return {"layers": layers, "task": rp.task_predictors(layers), "primary": rp.PRIMARY, "planted": planted,
            "truth": {p: k if p == planted else 0 for p in modules},
            "energy": planted_energy(k, modules[planted].weight.detach(), second_moment, wanted - base),
            "seconds": time.time() - started}


def unit_predictors(k: int, root: Path, home: Path = Path("docs/study/rank/predictors")) -> dict:
    """Benchmark v2's predictors of unit dense-k (`probe`, centred), computed once and kept as
    ``<home>/dense-k<k>.json`` beside the registered units' (the shape `rank_benchmark.test_predictors` reads)."""
    cache = home / f"dense-k{k}.json"
    if not cache.exists():
        home.mkdir(parents=True, exist_ok=True)
        atomic_write_json(cache, probe(k, root, centred=True))
    return json.loads(cache.read_text())


def energy_ranks(eigenvalues: torch.Tensor) -> dict:
    """Of a spectrum (any order): the fewest directions holding 50% / 90% of its sum, and its effective rank."""
    from loralab.analysis.rank_predictors import effective_rank

    values = eigenvalues.double().clamp_min(0).sort(descending=True).values
    share = values.cumsum(0) / values.sum()
    return {"r50": int((share < 0.5).sum()) + 1, "r90": int((share < 0.9).sum()) + 1,
            "effective_rank": effective_rank(torch.diag(values.sqrt())), "top": [float(v) for v in values[:8]]}


def planted_energy(k: int, weight: torch.Tensor, second_moment: torch.Tensor, change: torch.Tensor) -> dict:
    """`energy_ranks` of the planted layer's output change ΔW·Σ_h·ΔWᵀ and of the pooled change's second moment
    (``change``: t − f₀, texts × hidden). ΔW is redrawn as `dense_pilot.targets` draws it (generator 3000 + k)."""
    from loralab.experiments import rank_units

    delta = rank_units.planted_update(weight, k, rank_units.PLANTED_STRENGTH,
                                      torch.Generator().manual_seed(3000 + k)).double()
    pooled = change.double().T @ change.double() / len(change)
    return {"planted_layer": energy_ranks(torch.linalg.eigvalsh(delta @ second_moment @ delta.T)),
            "pooled_output": energy_ranks(torch.linalg.eigvalsh(pooled))}


def centred_gain(k: int, root: Path, test_loss: dict) -> dict:
    """The pilot's rungs (``test_loss``: rung → test MSE, as in dense_pilot.json) against L_0' = E‖t − f₀ − m‖²/384,
    m the mean change t − f₀ over the training texts: the untrained model plus the best constant shift. Assumes every
    rung r ≥ 1 learned that shift (a rung that ends above L_0' did not: its g is negative)."""
    from loralab.experiments import lm_pilot

    found = dp.targets(k, root)
    shift = (found["train"] - found["base_train"]).double().mean(0)
    change = (found["test"] - found["base_test"]).double()
    centred = float(((change - shift) ** 2).mean())
    losses = {0: centred, **{int(r): v for r, v in test_loss.items() if int(r) > 0}}
    return {"shift_share": float((shift ** 2).mean()) / float((change ** 2).mean()), "centred_l0": centred,
            **lm_pilot.summary(losses)}


def run(root: str = "runs/dense_pilot", out: str = "docs/study/rank/dense_probe.json",
        pilot: str = "docs/study/rank/dense_pilot.json") -> dict:
    """Probe every pilot unit (and, when the pilot's report exists, read it with `centred_gain`); write ``out``."""
    report = {"design": __doc__.split("\n\n")[1], "units": {f"dense-k{k}": probe(k, Path(root)) for k in dp.KS}}
    if Path(pilot).exists():
        for name, unit in json.loads(Path(pilot).read_text())["units"].items():
            report["units"][name]["post_hoc_centred"] = centred_gain(unit["k"], Path(root), unit["test_loss"])
    atomic_write_json(Path(out), report)
    for name, found in report["units"].items():
        at = found["layers"][found["planted"]]
        print(name, found["task"][found["primary"]], {key: at[key] for key in ("gradient_effective_rank",
                                                                                "gradient_null_rank")})
    return report


def gain(losses: dict[int, float]) -> dict[int, float]:
    """g(r) = (L_0 − L_r)/(L_0 − L_best) per rung (``losses``: rung → test loss; 0 = the head alone or untrained)."""
    head, best = losses[0], min(losses.values())
    return {r: (head - loss) / (head - best) for r, loss in sorted(losses.items())}


def figure(pilot: str = "docs/study/rank/dense_pilot.json", rank: str = "docs/study/rank/rank.json",
           out: str = "docs/study/rank/figures/dense_gain.png",
           pilot3: str = "docs/study/rank/dense_pilot3.json") -> Path:
    """g(r) of the dense units (colour, the planted k dotted; pilot 3's dashed when its report exists) over the
    registered units' (grey, seed means)."""
    from loralab.plotting import pyplot, save

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 4.4))
    x = {r: math.log2(r) if r else -1 for r in (0, 1, 2, 4, 8, 16, 32, 64)}
    for i, unit in enumerate(json.loads(Path(rank).read_text())["units"]):
        curve = gain({int(r): v for r, v in unit["mean_test_loss"].items()})
        ax.plot([x[r] for r in curve], list(curve.values()), color="0.75", linewidth=0.8,
                label="registered units (13, seed means)" if i == 0 else None)
    for (name, unit), color in zip(json.loads(Path(pilot).read_text())["units"].items(), ("tab:blue", "tab:red")):
        curve = gain({int(r): v for r, v in unit["test_loss"].items()})
        ax.plot([x[r] for r in curve], list(curve.values()), marker="o", markersize=3, color=color,
                label=f"{name} (r90 {unit['r90']:.1f}; planted k dotted)")
        ax.axvline(math.log2(unit["k"]), color=color, linestyle=":", linewidth=1)
    if Path(pilot3).exists():
        for name, unit in json.loads(Path(pilot3).read_text())["units"].items():
            curve = gain({int(r): v for r, v in unit["test_loss"].items()})
            ax.plot([x[r] for r in curve], list(curve.values()), marker="s", markersize=3, linestyle="--",
                    color={4: "tab:blue", 32: "tab:red"}.get(unit["k"], "black"),
                    label=f"{name}, pilot 3: r = 0 a trained bias (r90 {unit['r90']:.1f})"
                    + "".join(f"; g({r}) = {g:.1f} below" for r, g in curve.items() if g < -0.3))
    ax.axhline(0.9, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(list(x.values()), ["0", "1", "2", "4", "8", "16", "32", "64"])
    ax.set_ylim(-0.3, 1.05)  # pilot 3's dense-k4 at r = 1 lies below (−1.3): off the chart
    ax.set(xlabel="LoRA rank r (q/v, s = α/r); 0 = head alone (registered), untrained (pilot 1) or a bias (pilot 3)",
           ylabel="normalised gain g(r)", title="Test-loss gain: dense planted units vs the registered benchmark")
    ax.legend(fontsize=7, loc="lower right")
    return save(fig, Path(out))
