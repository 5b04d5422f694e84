"""The rank benchmark's task units: tasks whose needed LoRA rank should differ, built offline from packaged data.

* **Label granularity** (`granularity`): TREC's ~5,400 questions with their 50 fine labels grouped at random
  (seeded) into C ∈ {2, 4, 8, 16, 32} classes, and all 50: the texts are identical across the ladder, only
  the task changes — so text length or domain cannot explain a difference in needed rank.
* **Data size**: the 50-class task on 400 training examples instead of 3,000 (the capacity law: less
  information to store, less rank needed).
* **Controls**: TREC's 6 coarse classes, and binary sentiment and spam tasks (movie, tweets, amazon, sms, and
  since amendment 7 nyt).

Each unit is a dataset (a packaged name, or a CSV this module writes under the benchmark's directory) and the
number of training examples; `rank_benchmark` trains the rank ladder on each.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import torch

from loralab import data as datasets
from loralab.errors import ConfigError
from loralab.io.atomic import atomic_write, atomic_write_json

GRANULARITY = (2, 4, 8, 16, 32)
FULL_TRAIN, SMALL_TRAIN, MAX_EVAL = 3000, 400, 500


@dataclass(frozen=True)
class RankUnit:
    """One task of the benchmark."""

    name: str
    data: str  # a packaged dataset name, or the CSV `build` writes (relative to the benchmark's data directory)
    max_train: int
    description: str
    classes: int
    max_length: int = 64
    group: Optional[int] = None  # for a granularity unit: how many classes the 50 fine labels are grouped into
    planted: Optional[int] = None  # for a planted-rank unit: the rank k of the teacher's update (`build_planted`)
    design: str = "every-value"  # a planted unit's construction: "every-value" (`build_planted`) or "last-value"
    # (`build_planted_subspace`)

    def dataset(self, root: Path) -> str:
        return str(root / self.data) if self.data.endswith(".csv") else self.data


def units() -> list[RankUnit]:
    """Every unit, in a fixed order."""
    made = [RankUnit(f"trec-c{c}", f"trec-c{c}.csv", FULL_TRAIN, f"TREC questions, the 50 fine labels grouped at random "
                     f"into {c} classes", c, 48, c) for c in GRANULARITY]
    made += [RankUnit("trec-c50", "trec-fine", FULL_TRAIN, "TREC questions, the 50 fine labels", 50, 48),
             RankUnit("trec-c50-small", "trec-fine", SMALL_TRAIN, "TREC questions, the 50 fine labels, 400 training "
                      "examples", 50, 48),
             RankUnit("trec-coarse", "trec", FULL_TRAIN, "TREC questions, the 6 coarse labels", 6, 48),
             RankUnit("movie", "movie", FULL_TRAIN, "movie-review snippets, binary sentiment", 2),
             RankUnit("tweets", "tweets", FULL_TRAIN, "tweets, binary sentiment", 2),
             RankUnit("amazon", "amazon", FULL_TRAIN, "Amazon review snippets, binary sentiment", 2),
             RankUnit("sms", "sms", FULL_TRAIN, "SMS messages, spam or ham", 2),
             RankUnit("nyt", "nyt", FULL_TRAIN, "New York Times editorial snippets, binary sentiment", 2)]  # amendment 7
    return made


def grouping(fine_labels: list[str], classes: int, seed: int = 0) -> dict[str, str]:
    """Fine label → group name: the labels in a seeded random order, dealt round-robin into ``classes`` groups
    (each group gets ⌊50/C⌋ or ⌈50/C⌉ fine labels)."""
    order = list(fine_labels)
    random.Random(seed).shuffle(order)
    return {label: f"g{index % classes}" for index, label in enumerate(order)}


def write_labels(path: Path, rows: Iterable[dict]) -> None:
    """A text,label CSV of ``rows``, written atomically (its directory made if missing)."""
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, ["text", "label"])
            writer.writeheader()
            writer.writerows(rows)

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, write)


PLANTED_CLASSES, PLANTED_STRENGTH, PLANTED_MAX_LENGTH = 8, 1.0, 48


def planted_update(weight: torch.Tensor, k: int, strength: float, generator: torch.Generator) -> torch.Tensor:
    """ΔW = σ·U·Vᵀ (out × in): U (out × k) and V (in × k) with orthonormal columns drawn at random, every singular
    value σ = strength·‖W‖₂ — a flat spectrum, so the update's rank is exactly k and no direction is minor."""
    out_dim, in_dim = weight.shape
    u = torch.linalg.qr(torch.randn(out_dim, k, generator=generator, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(in_dim, k, generator=generator, dtype=torch.float64))[0]
    sigma = strength * torch.linalg.matrix_norm(weight.double(), 2)
    return (sigma * u @ v.T).to(weight.dtype)


def pooled_outputs(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 128) -> torch.Tensor:
    """The sequence classifier's input features — the encoder's pooled output (N × hidden) — for ``texts``."""
    encoder = getattr(model, model.base_model_prefix)
    rows = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            batch = tokenizer(texts[i : i + batch_size], padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt")
            rows.append(encoder(**batch).pooler_output.float())
    return torch.cat(rows)


def planted_labels(teacher_features: torch.Tensor, classes: int, generator: torch.Generator) -> torch.Tensor:
    """Class = argmax of a fixed random readout R (classes × hidden) of the teacher's centred features (N × hidden),
    each class's score shifted by its median so the classes are about equally common. The readout is linear in the
    teacher's features, so the base model plus the planted update plus a head reproduces every label."""
    readout = torch.randn(classes, teacher_features.shape[1], generator=generator, dtype=torch.float64)
    return readout_labels(teacher_features, readout)


def readout_labels(features: torch.Tensor, readout: torch.Tensor) -> torch.Tensor:
    """argmax over classes of the scores R·(h − mean h) (``readout`` R: classes × hidden, ``features``: N × hidden),
    each class's score shifted by its median over the N texts."""
    scores = (features.double() - features.double().mean(0)) @ readout.T
    return (scores - scores.median(0).values).argmax(1)


def no_value_layers(model_name: str, k: int) -> ConfigError:
    return ConfigError(f"{model_name} has no attention.self.value layers to plant a rank-{k} update in; planted-rank "
                       f"units need a BERT-style encoder (e.g. minilm).")


def write_planted(unit: RankUnit, path: Path, texts: list[str], labels: torch.Tensor, truth: dict, **about) -> None:
    """A planted unit's CSV at ``path`` and, beside it, ``<name>.planted.json``: the planted rank and strength,
    ``about`` (model, design) and the per-layer truth."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path.parent / f"{unit.name}.planted.json", {"rank": unit.planted, "strength": PLANTED_STRENGTH,
                                                                  **about, "per_layer_rank": truth})
    write_labels(path, ({"text": t, "label": f"c{int(y)}"} for t, y in zip(texts, labels)))


def build_planted(unit: RankUnit, path: Path, model_name: str, seed: int = 0) -> None:
    """A planted-rank task on TREC's questions: the teacher is ``model_name`` with a rank-k update (`planted_update`)
    added to the value projection of every layer; labels come from a fixed random readout of the teacher's pooled
    features (`planted_labels`). The student (LoRA on query and value, a new head) can reproduce the teacher exactly
    at rank k on the value layers; its query layers need rank 0. Writes the CSV and ``<name>.planted.json`` (the
    per-layer truth)."""
    from loralab import models

    _, _, rows = datasets.read_all("trec-fine")
    texts = [r["text"] for r in rows]
    torch.manual_seed(seed)
    model, tokenizer = models.load(model_name, "classification", num_labels=unit.classes)
    model.eval()
    generator = torch.Generator().manual_seed(1000 + unit.planted)
    truth = {}
    for name, module in model.named_modules():  # the freshly loaded teacher is this function's own
        if name.endswith("attention.self.value"):
            with torch.no_grad():
                module.weight.add_(planted_update(module.weight, unit.planted, PLANTED_STRENGTH, generator))
            truth[name] = unit.planted
        elif name.endswith("attention.self.query"):
            truth[name] = 0
    if not any(truth.values()):
        raise no_value_layers(model_name, unit.planted)
    labels = planted_labels(pooled_outputs(model, tokenizer, texts, unit.max_length), unit.classes, generator)
    write_planted(unit, path, texts, labels, truth, model=model_name)


SHORT_TEXTS = ("trec-fine", "movie", "tweets", "amazon", "sms", "nyt")  # 33,538 texts together


def pooled_texts(names: tuple = SHORT_TEXTS, seed: int = 0) -> list[str]:
    """Every distinct text of the packaged short-text datasets ``names``, in a seeded random order."""
    texts = sorted({r["text"] for name in names for r in datasets.read_all(name)[2]})
    random.Random(seed).shuffle(texts)
    return texts


def subspace_readout(change: torch.Tensor, k: int, classes: int, generator: torch.Generator) -> torch.Tensor:
    """A readout (classes × hidden) of the directions a rank-k update moved the features along: R = G·Q_kᵀ with Q_k
    (hidden × k) the top-k principal directions of ``change`` (N × hidden: teacher minus base features) and G
    (classes × k) Gaussian. The scores R·h then depend on the teacher only through k directions, and — unlike a
    random readout of C < k scores — every one of the k planted directions carries label information."""
    centred = change.double() - change.double().mean(0)
    directions = torch.linalg.svd(centred, full_matrices=False).Vh[:k]  # k × hidden
    return torch.randn(classes, k, generator=generator, dtype=torch.float64) @ directions


def build_planted_subspace(unit: RankUnit, path: Path, model_name: str, seed: int = 0,
                           texts: Optional[list[str]] = None) -> None:
    """A planted-rank task whose needed rank can reach k (design "last-value"; the session-15 note in
    docs/study/rank/README.md says why `build_planted`'s could not pass C): the teacher is ``model_name`` with a
    rank-k update (`planted_update`, σ = ‖W‖₂) in the value projection of the last layer only; the labels are the
    argmax of `subspace_readout`'s C median-shifted scores of the teacher's pooled features, over ``texts`` (default
    `pooled_texts`). Per-layer truth: k on that layer, 0 on every other query/value projection."""
    from loralab import models

    texts = pooled_texts() if texts is None else texts
    torch.manual_seed(seed)
    model, tokenizer = models.load(model_name, "classification", num_labels=unit.classes)
    model.eval()
    base = pooled_outputs(model, tokenizer, texts, unit.max_length)
    targets = [n for n, _ in model.named_modules() if n.endswith(("attention.self.query", "attention.self.value"))]
    planted = [n for n in targets if n.endswith("attention.self.value")][-1:]
    if not planted:
        raise no_value_layers(model_name, unit.planted)
    generator = torch.Generator().manual_seed(2000 + unit.planted)
    module = model.get_submodule(planted[0])  # the freshly loaded teacher is this function's own
    with torch.no_grad():
        module.weight.add_(planted_update(module.weight, unit.planted, PLANTED_STRENGTH, generator))
    teacher = pooled_outputs(model, tokenizer, texts, unit.max_length)
    labels = readout_labels(teacher, subspace_readout(teacher - base, unit.planted, unit.classes, generator))
    write_planted(unit, path, texts, labels, {n: unit.planted if n in planted else 0 for n in targets},
                  model=model_name, design=unit.design)


def build(unit: RankUnit, root: Path, model_name: str = "minilm") -> str:
    """The unit's dataset: its CSV written under ``root`` (once) for a granularity or planted-rank unit; the packaged
    name otherwise."""
    if unit.planted is not None:
        path = root / unit.data
        if not path.exists():
            (build_planted_subspace if unit.design == "last-value" else build_planted)(unit, path, model_name)
        return str(path)
    if unit.group is None:
        return unit.data
    path = root / unit.data
    if not path.exists():
        _, fine, rows = datasets.read_all("trec-fine")
        mapping = grouping(fine, unit.group)
        write_labels(path, ({"text": r["text"], "label": mapping[fine[r["label"]]]} for r in rows))
    return str(path)
