"""The layer scan's learning rate, bracketed per layer (exploratory; the rule is in docs/study/rank/README.md,
"Layer scan, learning rate", written before its runs).

The layer scan (`dense_layer_pilot`) trained every layer's ladder at lr 3e-3, the value v2's lr grid chose for the
update in the last layer, not re-chosen per layer. Here each layer L gets v2's own choice (`dense_units.choose_lrs`):
the grid {3e-4, 1e-3, 3e-3} at r = 4, seed 0, lowest validation MSE, extended ×3 past an edge optimum at most twice.
Where the choice is not 3e-3, the layer's ladder r ∈ {1, 4, 16, 64} (seed 0) is trained at the chosen lr and its
needed rank r90 is reported beside 3e-3's (seed 0, read back from the layer's archive).

    python -c "from loralab.experiments.dense_layer_lr import run; run()"

Runs are keyed and archived as the layer scan's (`dense_layer_pilot.version`, the layer's
``docs/study/rank/dense_layer<L>_runs.jsonl``), so the 3e-3 runs are read back, not trained again.
"""

from __future__ import annotations

import json
from pathlib import Path

from loralab.experiments import dense_layer_pilot as dlp
from loralab.experiments import dense_units as du
from loralab.experiments.launcher import LocalExecutor
from loralab.io.atomic import atomic_write_json

LAYERS, K, SEED = (0, 2, 4), 16, 0


def ladder(runs: du.Runs, root: Path, lr: float, layer: int) -> dict:
    """Seed 0's ladder at ``lr`` (trained where the archive lacks it): test MSE per rung and r90."""
    found = runs.get([(K, r, SEED, lr) for r in du.RANKS], f"dense layer {layer}: ladder at lr {lr:g}")
    unit = du.summary(K, root, found, lr, (SEED,))
    return {key: unit[key] for key in ("needed_rank", "mean_test_loss", "relative_gain", "at_step_cap")}


def layer_lr(layer: int, root: Path, archive: Path, workers: int) -> dict:
    """One layer: v2's lr choice at r = `dense_units.GRID_RANK`, and the ladder at 3e-3 and (when it differs) at the
    chosen lr."""
    dlp.plant(K, layer, root)
    runs = du.Runs(archive, root, LocalExecutor(workers))
    runs.version = dlp.version()
    chosen = du.choose_lrs(runs, ks=(K,))[K]
    ladders = {f"{dlp.LR:g}": ladder(runs, root, dlp.LR, layer)}
    if chosen["lr"] != dlp.LR:
        ladders[f"{chosen['lr']:g}"] = ladder(runs, root, chosen["lr"], layer)
    return {"grid": {f"{lr:g}": loss for lr, loss in chosen["grid"].items()}, "chosen": chosen["lr"],
            "at_edge": chosen["at_edge"], "ladders": ladders}


def run(layers: tuple = LAYERS, root: str = "runs", out: str = "docs/study/rank/dense_layer_lr.json",
        archives: str = "docs/study/rank", workers: int = 2) -> dict:
    """Every layer in turn (its targets under ``<root>/dense_layer<L>``); write ``out`` and return it."""
    report = {"design": __doc__.split("\n\n")[1], "version": dlp.version(), "k": K, "seed": SEED,
              "layers": {str(layer): layer_lr(layer, Path(root) / f"dense_layer{layer}",
                                              Path(archives) / f"dense_layer{layer}_runs.jsonl", workers)
                         for layer in layers}}
    atomic_write_json(Path(out), report)
    print(json.dumps({layer: {"chosen": v["chosen"], "r90": {lr: x["needed_rank"] for lr, x in v["ladders"].items()}}
                      for layer, v in report["layers"].items()}))
    return report
