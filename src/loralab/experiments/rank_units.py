"""The rank benchmark's task units: tasks whose needed LoRA rank should differ, built offline from packaged data.

* **Label granularity** (`granularity`): TREC's ~5,400 questions with their 50 fine labels grouped at random
  (seeded) into C ∈ {2, 4, 8, 16, 32} classes, and all 50: the texts are identical across the ladder, only
  the task changes — so text length or domain cannot explain a difference in needed rank.
* **Data size**: the 50-class task on 400 training examples instead of 3,000 (the capacity law: less
  information to store, less rank needed).
* **Controls**: TREC's 6 coarse classes, and binary sentiment and spam tasks (movie, tweets, amazon, sms).

Each unit is a dataset (a packaged name, or a CSV this module writes under the benchmark's directory) and the
number of training examples; `rank_benchmark` trains the rank ladder on each.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from loralab import data as datasets

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
             RankUnit("sms", "sms", FULL_TRAIN, "SMS messages, spam or ham", 2)]
    return made


def grouping(fine_labels: list[str], classes: int, seed: int = 0) -> dict[str, str]:
    """Fine label → group name: the labels in a seeded random order, dealt round-robin into ``classes`` groups
    (each group gets ⌊50/C⌋ or ⌈50/C⌉ fine labels)."""
    order = list(fine_labels)
    random.Random(seed).shuffle(order)
    return {label: f"g{index % classes}" for index, label in enumerate(order)}


def build(unit: RankUnit, root: Path) -> str:
    """The unit's dataset: its CSV written under ``root`` (once) for a granularity unit; the packaged name otherwise."""
    if unit.group is None:
        return unit.data
    path = root / unit.data
    if not path.exists():
        _, fine, rows = datasets.read_all("trec-fine")
        mapping = grouping(fine, unit.group)
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_suffix(".tmp")
        with open(staging, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, ["text", "label"])
            writer.writeheader()
            writer.writerows({"text": r["text"], "label": mapping[fine[r["label"]]]} for r in rows)
        staging.replace(path)
    return str(path)
