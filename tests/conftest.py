"""Tiny transformers models with fixed random weights, shared by the adapter tests."""

from __future__ import annotations

import csv

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

VOCAB = 64


def build(arch: str, tied: bool = False) -> torch.nn.Module:
    """The same tiny model (same weights) every call, in eval mode, dropout off.

    GPT-2 ties its output head to the input embedding only with ``tied=True``.
    """
    torch.manual_seed(1234)
    if arch == "bert":
        cfg = BertConfig(
            vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=32, num_labels=3, initializer_range=0.2,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        )
        model = BertForSequenceClassification(cfg)
    elif arch == "gpt2":
        cfg = GPT2Config(
            vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=2, n_positions=32, initializer_range=0.2,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=tied,
        )
        model = GPT2LMHeadModel(cfg)
    elif arch == "llama":
        cfg = LlamaConfig(
            vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=32, tie_word_embeddings=False, initializer_range=0.2,
        )
        model = LlamaForCausalLM(cfg)
    else:
        raise ValueError(arch)
    return model.eval()


def inputs(batch: int = 3, length: int = 7, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1, VOCAB, (batch, length), generator=gen)


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def train_step(model: torch.nn.Module, ids: torch.Tensor, lr: float = 1e-2) -> None:
    """One real AdamW step on the trainable parameters, so B (and m) move away from init."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    model.train()
    model(input_ids=ids).logits.square().mean().backward()
    opt.step()
    opt.zero_grad()
    model.eval()


@pytest.fixture
def keep_threads():
    """In-process `loralab train` runs set torch's thread count (--threads 1); restore it after the test."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def ids() -> torch.Tensor:
    return inputs()


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict:
    """A tiny BERT directory (MiniLM tokenizer) and a 180-row CSV slice of the real movie data
    (144 / 18 / 18 after the split)."""
    from transformers import AutoTokenizer

    from loralab import data as datasets
    from loralab import models

    root = tmp_path_factory.mktemp("tiny")
    tokenizer = AutoTokenizer.from_pretrained(models.minilm_dir())
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, num_labels=2)
    BertForSequenceClassification(config).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    rows = datasets.load("movie", "train", seed=0, limit=180).examples
    with open(root / "movie.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["text", "label"])
        writer.writeheader()
        writer.writerows({"text": r["text"], "label": ["negative", "positive"][r["label"]]} for r in rows)
    return {"model": str(root / "model"), "data": str(root / "movie.csv"), "root": root}


def short_dense_schedule(monkeypatch, module) -> None:
    """A dense-unit module's training schedule cut to 40–60 steps, validated every 20 (`dense_pilot`, `dense_pilot3`,
    `dense_units` each keep their own constants)."""
    for name, value in {"MIN_STEPS": 40, "MAX_STEPS": 60, "EVAL_STEPS": 20, "PATIENCE": 1, "WARMUP": 5}.items():
        monkeypatch.setattr(module, name, value)


@pytest.fixture
def tiny_dense(tiny, tmp_path, monkeypatch):
    """The dense planted units' teacher, student and texts on the tiny BERT and 96 / 32 / 32 real movie texts; the
    teachers' targets kept under the returned directory."""
    from loralab import data as datasets
    from loralab.experiments import dense_pilot

    texts = [r["text"] for r in datasets.load("movie", "train", seed=0, limit=160).examples]
    monkeypatch.setattr(dense_pilot, "MODEL", tiny["model"])
    monkeypatch.setattr(dense_pilot, "splits",
                        lambda: {"train": texts[:96], "validation": texts[96:128], "test": texts[128:]})
    return tmp_path
