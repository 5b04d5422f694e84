"""`TrainConfig`: one fine-tuning run, validated when built; the CLI flags are its fields."""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Optional

from loralab.adapters.config import check_alpha
from loralab.errors import ConfigError

PROJECTIONS = ("fastfood", "dense", "sparse")
PRECISIONS = ("fp32", "bf16")
SCHEDULERS = ("linear", "cosine", "constant")
# Fields that change how a run is carried out or logged but not what it computes: --resume may differ in these.
RESUME_MAY_CHANGE = ("out", "resume", "overwrite", "threads", "log_every", "checkpoint_every", "analysis_every",
                     "gradient_checkpointing")


@dataclass
class TrainConfig:
    """A fine-tuning run.

    Attributes:
        model: Model name (minilm, smollm2), a local HF model directory, or a hub id when online.
        data: Dataset name (movie, tweets, amazon, nyt, trec, sms, bbc, chat-qa) or a CSV/TSV/JSONL file.
        method: How to fine-tune; one of the registered methods (`loralab train --help` lists them).
        r: LoRA rank.
        alpha: LoRA alpha (> 0); the update is scaled by alpha/r (alpha/sqrt(r) with --rslora).
        dropout: Dropout on the LoRA input path.
        targets: Comma-separated module names (exact or .suffix), 'all-linear', or a regex. Default: the
            attention query and value projections for lora/dora, every tensor for did/said.
        rank_pattern: JSON object {regex: rank} overriding --r for modules whose name ends with the regex
            (PEFT's rank_pattern), e.g. '{"output\\.dense": 4}', or a .json file holding one (e.g. `loralab
            probe`'s rank_pattern.json); the run's config keeps the object.
        alpha_pattern: JSON object {regex: alpha} or a .json file, like --rank-pattern for --alpha.
        rslora: Scale by alpha/sqrt(r) (rank-stabilised LoRA).
        init: LoRA/DoRA initialisation: default (A Kaiming-uniform, B = 0), gaussian, pissa (A, B from W's
            top-r singular directions; W keeps the residual) or olora (from W's QR factors; Linear layers).
        d: Subspace dimension for did/said (SAID's per-tensor scales count towards it).
        projection: Random projection for did/said: fastfood, dense or sparse.
        epochs: Passes over the training split.
        patience: Stop early when this many epochs in a row did not improve the validation metric (accuracy;
            loss for causal LM); 0 trains every epoch. The best epoch's weights are kept either way.
        lr: Peak learning rate (AdamW).
        batch_size: Examples per optimizer step and process group (the global batch).
        group_by_length: Batch examples of similar length together (less padding; seeded, as HF's
            group_by_length).
        grad_accum: Micro-batches accumulated per optimizer step (each of --batch-size examples).
        warmup: Fraction of the optimizer steps with linear warm-up.
        scheduler: The learning rate after warm-up: linear (decays to 0), cosine (half a cosine to 0) or
            constant.
        weight_decay: AdamW weight decay.
        max_grad_norm: Clip the gradient norm to this (0 turns clipping off).
        max_train: Use at most this many training examples (the first of the seeded split).
        max_eval: Use at most this many validation and test examples.
        max_length: Truncate sequences to this many tokens.
        eval_batch_size: Batch size for evaluation.
        precision: fp32, or bf16 (torch.autocast; adapter and optimizer state stay fp32; the model is loaded
            with eager attention, faster than SDPA in bf16 on CPU).
        gradient_checkpointing: Recompute each block's activations in the backward pass instead of keeping
            them: less memory for long sequences, one more forward pass of time; the same result, so a
            --resume may switch it.
        seed: Seed for the split, the initialisation, the data order and dropout.
        out: Run directory: metrics.jsonl, result.json, the adapter (or model), checkpoints. Must be new or
            empty unless --resume or --overwrite.
        overwrite: Delete what --out holds before training.
        checkpoint_every: Also checkpoint every this many optimizer steps (0: only at epoch ends).
        resume: Continue the run in --out from its last checkpoint (the config must match).
        log_every: Write the training loss to metrics.jsonl every this many steps.
        analysis_every: Every this many steps, log each adapted layer's effective rank and norm of ΔW
            to metrics.jsonl (0: off).
        threads: torch CPU threads (torch's choice when not given).
    """

    model: str = "minilm"
    data: str = "movie"
    method: str = "lora"
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: Optional[str] = None
    rank_pattern: Optional[str] = None
    alpha_pattern: Optional[str] = None
    rslora: bool = False
    init: str = "default"
    d: int = 1000
    projection: str = "fastfood"
    epochs: int = 3
    patience: int = 0
    lr: float = 5e-4
    batch_size: int = 16
    group_by_length: bool = False
    grad_accum: int = 1
    warmup: float = 0.06
    scheduler: str = "linear"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_train: Optional[int] = None
    max_eval: Optional[int] = None
    max_length: int = 128
    eval_batch_size: int = 64
    precision: str = "fp32"
    gradient_checkpointing: bool = False
    seed: int = 0
    out: str = "runs/run"
    overwrite: bool = False
    checkpoint_every: int = 0
    resume: bool = False
    log_every: int = 10
    analysis_every: int = 0
    threads: Optional[int] = None

    def __post_init__(self) -> None:
        from loralab.methods import get_method

        method = get_method(self.method)
        _check_choice("projection", self.projection, PROJECTIONS)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("scheduler", self.scheduler, SCHEDULERS)
        for name in ("r", "d", "epochs", "batch_size", "grad_accum", "max_length", "eval_batch_size", "log_every"):
            _check_int(name, getattr(self, name), minimum=1)
        for name in ("max_train", "max_eval", "threads"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), minimum=1)
        for name in ("checkpoint_every", "analysis_every", "patience"):
            _check_int(name, getattr(self, name), minimum=0)
        check_alpha(self.alpha, "--alpha")
        for name in ("lr", "weight_decay", "max_grad_norm", "warmup", "dropout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"--{flag(name)} must be a finite number ≥ 0, got {value!r}.")
        if self.lr == 0:
            raise ConfigError("--lr must be > 0; try 5e-4 for LoRA or 5e-5 for full fine-tuning.")
        if self.warmup >= 1:
            raise ConfigError(f"--warmup is a fraction of the steps in [0, 1), got {self.warmup}.")
        if self.dropout >= 1:
            raise ConfigError(f"--dropout must be in [0, 1), got {self.dropout}.")
        for name in ("rank_pattern", "alpha_pattern"):
            setattr(self, name, _pattern_from_file(name, getattr(self, name)))
            self.pattern(name)
        if self.init != "default" and not method.trains_adapter:
            raise ConfigError(f"--init {self.init} sets up a LoRA/DoRA adapter; --method {self.method} has none.")
        if self.init in ("pissa", "olora") and self.analysis_every:
            raise ConfigError(f"--analysis-every measures s·B·A, which for --init {self.init} is not the weight change "
                              "(that is s·(B·A − B₀·A₀)); train without one of the two.")
        if self.resume and self.overwrite:
            raise ConfigError("--resume continues the run in --out and --overwrite deletes it; give one of them.")
        method.check(self)

    def target_spec(self):
        """``targets`` as LoraConfig wants it: 'all-linear', a regex, a list of names, or None (the method's default)."""
        if self.targets is None:
            return None
        text = self.targets.strip()
        if text == "all-linear" or re.search(r"[\\*()\[\]|^$+?]", text):
            return text
        return [t.strip() for t in text.split(",") if t.strip()]

    def pattern(self, name: str) -> dict:
        """--rank-pattern / --alpha-pattern as a dict ({} when not given)."""
        text = getattr(self, name)
        if text is None:
            return {}
        try:
            value = json.loads(text) if isinstance(text, str) else text
        except json.JSONDecodeError as err:
            raise ConfigError(f"--{flag(name)} must be a JSON object like '{{\"query\": 4}}' or a .json file holding "
                              f"one, got {text!r} ({err}).") from None
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"--{flag(name)} must be a JSON object {{regex: number}}, got {text!r}.")
        return value

    def with_absolute_paths(self) -> "TrainConfig":
        """The same config with ``data`` and ``model`` made absolute where they are local paths, so a
        run directory can be evaluated or resumed from anywhere."""
        changes = {}
        for name in ("data", "model"):
            value = getattr(self, name)
            if Path(value).exists() and not Path(value).is_absolute():
                changes[name] = str(Path(value).resolve())
        changes["out"] = str(Path(self.out).resolve())
        return replace(self, **changes)

    def ignored_fields(self) -> set[str]:
        """The method-specific fields this run's method does not read (a LoRA run's --d, a full run's --r)."""
        from loralab.methods import get_method, method_specific_fields

        return method_specific_fields() - set(get_method(self.method).config_fields)

    def differences(self, other: "TrainConfig") -> dict[str, tuple]:
        """{field: (self's value, other's value)} for fields that change the result (see RESUME_MAY_CHANGE;
        a field neither run's method reads changes nothing)."""
        mine, theirs = self.with_absolute_paths(), other.with_absolute_paths()
        ignored = self.ignored_fields() & other.ignored_fields()
        return {f.name: (getattr(mine, f.name), getattr(theirs, f.name)) for f in fields(self)
                if f.name not in RESUME_MAY_CHANGE and f.name not in ignored
                and getattr(mine, f.name) != getattr(theirs, f.name)}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def flag(name: str) -> str:
    return name.replace("_", "-")


def _pattern_from_file(name: str, value):
    """A --rank-pattern / --alpha-pattern given as a path to a .json file → that file's JSON text, so the run's
    config holds the pattern itself (and --resume compares patterns, not file names)."""
    if not isinstance(value, str) or value.lstrip().startswith("{") or not value.endswith(".json"):
        return value
    try:
        pattern = json.loads(Path(value).read_text())
    except OSError as err:
        raise ConfigError(f"--{flag(name)} {value}: cannot read the file ({err.strerror}); give a JSON object "
                          "like '{\"query\": 4}' or the path of a .json file holding one.") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"--{flag(name)} {value}: not JSON ({err}).") from None
    return json.dumps(pattern)


def _check_choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"--{flag(name)} must be one of {choices}, got {value!r}.")


def _check_int(name: str, value, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer ≥ {minimum}"
        raise ConfigError(f"--{flag(name)} must be {kind}, got {value!r}.")


def field_help(cls=TrainConfig) -> dict[str, str]:
    """Each field's one-line description, from the class docstring's Attributes section."""
    helps, current = {}, None
    text = (cls.__doc__ or "").split("Attributes:", 1)[-1]
    for line in text.splitlines():
        found = re.match(r"\s{8}(\w+): (.*)", line)
        if found:
            current = found.group(1)
            helps[current] = found.group(2).strip()
        elif current and line.strip():
            helps[current] += " " + line.strip()
    return helps
