"""A pilot, not registered: does the needed rank still follow the planted rank k when the rank-k update sits in an
earlier layer? Benchmark v2 planted every update in the last layer's value projection, which is also where
gradient_importance peaks on every unit, planted or not (docs/study/rank/README.md, Status, session 20) — so a
predictor that picks a layer cannot be tested on those units. If r90 follows k wherever the update sits, units
planted at other layers can test one; if not, the needed rank depends on where the update is, not only its rank.

Unit dense-k@L: benchmark v2's dense-k (`dense_units`: the same texts, teacher draw ΔW = σ·U·Vᵀ with generator
3000 + k, student, bias rung, schedule and training function `dense_units.train_rung`) with the update in layer L's
value projection instead of the last layer's. lr 3e-3, the bracketed choice of all four v2 units; seed 0; rungs
r ∈ {1, 4, 16, 64}. Compared with v2's dense-k (r90 2.93 at k = 4, 10.6 at k = 16, 23.2 at k = 32).

    python -c "from loralab.experiments.dense_layer_pilot import run; run()"

The teacher's targets are written as ``<root>/dense-k<k>.safetensors`` (the file `dense_pilot.targets` reads), so
the v2 training function runs unchanged; runs are kept in ``docs/study/rank/dense_layer<L>_runs.jsonl``, named
with `dense_units.version` and this module's code.
"""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path

import torch

from loralab.errors import ConfigError
from loralab.experiments import dense_pilot as dp
from loralab.experiments import dense_units as du
from loralab.experiments import rank_units
from loralab.experiments.launcher import LocalExecutor, without_docstrings
from loralab.io.atomic import atomic_write_json

LAYER, KS, LR, SEEDS = 2, (16,), 3e-3, (0,)  # rungs: dense_units.RANKS


def value_layer(model, layer: int) -> str:
    """The name of layer ``layer``'s value projection (0 = the first)."""
    names = [n for n, _ in model.named_modules() if n.endswith("attention.self.value")]
    if not 0 <= layer < len(names):
        raise ConfigError(f"layer {layer}: {dp.MODEL} has {len(names)} attention value projections; choose one of "
                          f"0–{len(names) - 1}.")
    return names[layer]


def plant(k: int, layer: int, root: Path) -> Path:
    """Write the base model's and the layer-``layer`` teacher's pooled outputs under ``root`` as `dense_pilot.targets`
    names them (N × 384 per split); once."""
    from safetensors.torch import save_file

    from loralab import models

    path, base_path = root / f"dense-k{k}.safetensors", root / "dense-base.safetensors"
    if path.exists():
        return root
    torch.manual_seed(0)
    model, tokenizer = models.load(dp.MODEL, "classification", num_labels=2)
    model.eval()
    texts = dp.splits()
    root.mkdir(parents=True, exist_ok=True)
    if not base_path.exists():
        save_file({f"base_{s}": dp.features(model, tokenizer, t).contiguous() for s, t in texts.items()}, str(base_path))
    module = model.get_submodule(value_layer(model, layer))  # the freshly loaded teacher is this function's own
    with torch.no_grad():
        module.weight.add_(rank_units.planted_update(module.weight, k, rank_units.PLANTED_STRENGTH,
                                                     torch.Generator().manual_seed(3000 + k)))
    save_file({s: dp.features(model, tokenizer, t).contiguous() for s, t in texts.items()}, str(path))
    return root


def version() -> str:
    """A run's key: `dense_units.version` and this module's code (where the update is planted)."""
    tree = ast.dump(without_docstrings(ast.parse(Path(__file__).read_text())))
    return hashlib.sha256((du.version() + tree).encode()).hexdigest()[:12]


def run(layer: int = LAYER, ks: tuple = KS, root: str | None = None, out: str | None = None,
        archive: str | None = None, workers: int = 2) -> dict:
    """Plant, train the ladders (read back what the archive holds), write ``out`` and return it."""
    root_path = Path(root or f"runs/dense_layer{layer}")
    archive_path = Path(archive or f"docs/study/rank/dense_layer{layer}_runs.jsonl")
    for k in ks:
        plant(k, layer, root_path)
    runs = du.Runs(archive_path, root_path, LocalExecutor(workers))
    runs.version = version()
    found = runs.get([(k, r, s, LR) for s in SEEDS for k in ks for r in du.RANKS], f"dense layer {layer} pilot")
    units = {f"dense-k{k}@{layer}": {**du.summary(k, root_path, found, LR, SEEDS), "bias_alone": du.bias_alone(k, root_path)}
             for k in ks}
    report = {"design": __doc__.split("\n\n")[1], "layer": layer, "version": runs.version, "units": units}
    atomic_write_json(Path(out or f"docs/study/rank/dense_layer{layer}_pilot.json"), report)
    print(json.dumps({n: {key: u[key] for key in ("needed_rank", "mean_test_loss", "relative_gain")}
                      for n, u in units.items()}))
    return report
