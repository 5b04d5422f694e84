"""``loralab interference``: what combining adapters costs on the tasks themselves, and why.

Given LoRA runs trained on different tasks (each with its own classification head), every task is
evaluated on its test split with its own head and, for the encoder, with:

* its own adapter; the base model (no encoder update);
* each other adapter alone; each pair containing it and all adapters together, summed exactly
  (`compose.combine.cat`) at w = 1 and at w = 1/n;
* **negation** (task arithmetic, Ilharco et al. 2023, §3): its own adapter subtracted (w = −1),
  which should move the task toward chance, while a control task keeps its own adapter and also
  gets the negated one — it should stay within ``tolerance`` of its own score.

Next to the metrics, the geometry of every pair (`compose.geometry`: cosine of ΔWs, principal
angles of input subspaces, TIES sign conflicts, each against a random baseline of equal shapes),
and which of them tracks the measured interference (Spearman over ordered pairs; n is small and
said so). Writes interference.json, interference.md and interference.png.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Optional

import loralab as ll
from loralab import data as datasets
from loralab import models
from loralab.commands.compose import adapter_dir, composed, read_source
from loralab.compose.geometry import MEASURES, adapters_geometry
from loralab.errors import ConfigError
from loralab.experiments import stats
from loralab.experiments.stats import spearman
from loralab.io.peft_format import attach_adapter, config_from_peft
from loralab.runs import read_run
from loralab.tasks.batching import encode
from loralab.train.evaluate import evaluate

TOLERANCE = 0.02  # a control task "stays" when within 2 accuracy points of its own adapter


class Task:
    """One run's task: its config, data, base model (loaded once) and test rows."""

    def __init__(self, index: int, run: Path, max_eval: Optional[int]):
        self.index, self.run = index, run
        self.cfg = read_run(run)
        self.name = Path(self.cfg.data).stem
        task, self.labels, _ = datasets.read_all(self.cfg.data)
        if task != "classification":
            raise ConfigError(f"{run}: interference is measured on classification runs, not {task}.")
        self.model, tokenizer = models.load(self.cfg.model, task, num_labels=len(self.labels))
        split = datasets.load(self.cfg.data, "test", self.cfg.seed, max_eval or self.cfg.max_eval)
        self.rows, self.pad = encode(split, tokenizer, self.cfg.max_length), tokenizer.pad_token_id
        self.measured: dict[tuple[float, ...], float] = {}  # weights → accuracy, for the one set of sources

    def accuracy(self, sources: list[tuple], weights: list[float]) -> float:
        """Test accuracy with Σ w_i·ΔW_i on the encoder and this task's own head (composed in memory from the
        adapters `read_source` read). Measured once per ``weights`` (a task meets one set of sources)."""
        if tuple(weights) not in self.measured:
            self.measured[tuple(weights)] = self.evaluate(sources, weights)
        return self.measured[tuple(weights)]

    def evaluate(self, sources: list[tuple], weights: list[float]) -> float:
        config, tensors, _ = composed(sources, weights, method="cat", head=f"keep:{self.index}")
        attach_adapter(self.model, config_from_peft(config, "the composed adapter"), tensors, name="probe")
        try:
            return evaluate(self.model, self.rows, "classification", len(self.labels), self.pad, 64,
                            progress=False)["accuracy"]
        finally:
            ll.delete_adapter(self.model, "probe")


def task_table(task: Task, tasks: list[Task], sources: list[tuple]) -> dict:
    n, me = len(tasks), task.index
    only = lambda i, w=1.0: [w if j == i else 0.0 for j in range(n)]  # noqa: E731
    row = {"own": task.accuracy(sources, only(me)), "base": task.accuracy(sources, [0.0] * n),
           "negated": task.accuracy(sources, only(me, -1.0)),
           "all_w1": task.accuracy(sources, [1.0] * n), "all_w1/n": task.accuracy(sources, [1.0 / n] * n),
           "others_alone": {}, "pairs_w1": {}, "pairs_w1/2": {}}
    for other in tasks:
        if other.index == me:
            continue
        row["others_alone"][other.name] = task.accuracy(sources, only(other.index))
        for key, w in (("pairs_w1", 1.0), ("pairs_w1/2", 0.5)):
            weights = [w if j in (me, other.index) else 0.0 for j in range(n)]
            row[key][other.name] = task.accuracy(sources, weights)
    row["chance"] = majority_rate(task)
    return row


def majority_rate(task: Task) -> float:
    """Accuracy of always answering the most frequent test label: "chance" for negation."""
    return stats.majority_rate([r["labels"] for r in task.rows])


def negation(tasks: list[Task], sources: list[tuple]) -> list[dict]:
    """For each (negated task t, control c): c with τ_c alone and with τ_c − τ_t."""
    rows = []
    for t, c in itertools.permutations(tasks, 2):
        weights = [1.0 if j == c.index else (-1.0 if j == t.index else 0.0) for j in range(len(tasks))]
        own = c.accuracy(sources, [1.0 if j == c.index else 0.0 for j in range(len(tasks))])
        with_negation = c.accuracy(sources, weights)
        rows.append({"negated": t.name, "control": c.name, "control_own": own, "control_with_negation": with_negation,
                     "stays": abs(with_negation - own) <= TOLERANCE})
    return rows


def predictors(table: dict, geometry: dict) -> dict:
    """Spearman between each pair's interference (own − pair at w=1, on each task) and each geometry measure."""
    drops, measures = [], {k: [] for k in MEASURES if k != "a_cosine"}
    for task, row in table.items():
        for other, acc in row["pairs_w1"].items():
            g = geometry.get(f"{task} vs {other}") or geometry.get(f"{other} vs {task}")
            drops.append(row["own"] - acc)
            for key in measures:
                measures[key].append(g["summary"][f"pair_{key}"])
    return {"n_ordered_pairs": len(drops), "interference": drops,
            "spearman": {k: spearman(v, drops) for k, v in measures.items()}}


def run_interference(runs: list[str], out: str | Path, max_eval: Optional[int] = None) -> dict:
    started = time.time()
    if len(runs) < 2:
        raise ConfigError("give at least two runs (`loralab interference A B --out OUT`) to measure interference.")
    sources = [read_source(adapter_dir(r)) for r in runs]  # a full or subspace run is refused, saying what to do
    tasks = [Task(i, Path(r), max_eval) for i, r in enumerate(runs)]
    stems, dirs = [t.name for t in tasks], [t.run.name for t in tasks]
    for t in tasks:  # two runs of one dataset (e.g. two seeds) keep apart under their directories' names
        if stems.count(t.name) > 1:
            t.name = f"{t.name} ({t.run.name if dirs.count(t.run.name) == 1 else t.run})"
    table = {t.name: task_table(t, tasks, sources) for t in tasks}
    factor_sets = {t.name: s[0] for t, s in zip(tasks, sources)}
    geometry = {f"{a} vs {b}": adapters_geometry(factor_sets[a], factor_sets[b])
                for a, b in itertools.combinations(factor_sets, 2)}
    result = {"runs": runs, "table": table, "negation": negation(tasks, sources), "tolerance": TOLERANCE,
              "geometry": geometry,
              "predictors": predictors(table, geometry), "seconds": time.time() - started}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "interference.json").write_text(json.dumps(result, indent=1) + "\n")
    from loralab.experiments.interference_report import write_report

    write_report(result, out)
    return result
