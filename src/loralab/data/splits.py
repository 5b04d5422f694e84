"""Seeded, stratified train/validation/test splits of a named dataset or a file (or the user's own split files)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from loralab.data.files import read_file
from loralab.data.registry import HUTTO, READERS, read_hutto
from loralab.errors import DataError

SPLITS = ("train", "validation", "test")
FRACTIONS = (0.8, 0.1, 0.1)


@dataclass
class Dataset:
    """One split of a dataset.

    Attributes:
        name: Dataset name or file path.
        task: ``"classification"`` (examples have ``text``, ``label``) or ``"causal_lm"``
            (examples have ``prompt``, ``response``).
        labels: Class names; ``label`` is an index into it (empty for causal LM).
        examples: The rows of this split.
    """

    name: str
    task: str
    labels: list[str] = field(default_factory=list)
    examples: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.examples)


def read_all(name: str, labels: Optional[list[str]] = None) -> tuple[str, list[str], list[dict]]:
    """(task, labels, rows) for the whole dataset, before splitting."""
    if name in HUTTO:
        return read_hutto(name)
    if name in READERS:
        return READERS[name]()
    return read_file(Path(name), labels)


def split_indices(rows: list[dict], task: str, seed: int) -> dict[str, list[int]]:
    """80/10/10 indices per split, stratified by label for classification; fixed by ``seed``."""
    rng = random.Random(seed)
    groups: dict[int, list[int]] = {}
    for index, row in enumerate(rows):
        groups.setdefault(row["label"] if task == "classification" else 0, []).append(index)
    parts: dict[str, list[int]] = {s: [] for s in SPLITS}
    for key in sorted(groups):
        members = groups[key]
        rng.shuffle(members)
        n_train = round(len(members) * FRACTIONS[0])
        n_val = round(len(members) * FRACTIONS[1])
        parts["train"] += members[:n_train]
        parts["validation"] += members[n_train : n_train + n_val]
        parts["test"] += members[n_train + n_val :]
    for split in SPLITS:
        rng.shuffle(parts[split])
    return parts


def load_splits(name: str, seed: int = 0, max_train: Optional[int] = None, max_eval: Optional[int] = None,
                val_data: Optional[str] = None, test_data: Optional[str] = None) -> dict[str, Dataset]:
    """{split: Dataset} for a run: ``name`` split 80/10/10 by ``seed`` (as `load`), or — with ``val_data`` and
    ``test_data`` — all of ``name`` for training (shuffled by ``seed``) and those files as they are. The
    dataset is read once; at most ``max_train`` / ``max_eval`` examples per split."""
    if val_data is None:
        task, classes, rows = read_all(name)
        parts = checked_split(name, rows, task, seed)
        return {s: Dataset(name=name, task=task, labels=classes,
                           examples=[rows[i] for i in parts[s][:max_train if s == "train" else max_eval]])
                for s in SPLITS}
    task, classes, rows = read_all(name)
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    splits = {"train": Dataset(name=name, task=task, labels=classes, examples=[rows[i] for i in order[:max_train]])}
    for split, path in (("validation", val_data), ("test", test_data)):
        other_task, _, other_rows = read_all(path, classes or None)
        if other_task != task:
            raise DataError(f"{path} ({split} data) is {_kind(other_task)}, but {name} is {_kind(task)}; give "
                            "split files of the training data's kind.")
        splits[split] = Dataset(name=path, task=task, labels=classes, examples=other_rows[:max_eval])
    return splits


def _kind(task: str) -> str:
    return "text/label (classification) data" if task == "classification" else "prompt/response data"


def checked_split(name: str, rows: list[dict], task: str, seed: int) -> dict[str, list[int]]:
    parts = split_indices(rows, task, seed)
    empty = [s for s in SPLITS if not parts[s]]
    if empty:
        raise DataError(f"{name} has {len(rows)} rows: too few for the 80/10/10 split (the {', '.join(empty)} "
                        f"split{'s are' if len(empty) > 1 else ' is'} empty); give at least 10 rows per class.")
    return parts


def load(
    name: str, split: str = "train", seed: int = 0, limit: Optional[int] = None, labels: Optional[list[str]] = None
) -> Dataset:
    """One split of dataset ``name`` (see the module docstring), at most ``limit`` examples.

    The split is the same for the same ``seed`` whatever ``limit`` is: ``limit`` takes
    the first examples of the (shuffled) split.
    """
    if split not in SPLITS:
        raise DataError(f"split must be one of {SPLITS}, got {split!r}.")
    task, classes, rows = read_all(name, labels)
    chosen = checked_split(name, rows, task, seed)[split]
    if limit is not None:
        chosen = chosen[:limit]
    return Dataset(name=name, task=task, labels=classes, examples=[rows[i] for i in chosen])
