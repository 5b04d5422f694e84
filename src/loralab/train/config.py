"""`TrainConfig`: one fine-tuning run, validated when built — shared settings plus one section per family of
methods (``lora`` for lora/dora, ``subspace`` for did/said). The CLI flags are its fields.

On disk (config.json, a --config JSON or YAML file) the sections are objects::

    {"model": "minilm", "data": "movie", "method": "lora", "lora": {"r": 8, "alpha": 16}, "lr": 4e-3}

Older flat configs ({"r": 8, "d": 1000, ...}) are read too. Errors name fields (``lora.r``); the
command line shows them as its flags (`flag_of`: ``--rank``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Optional

from loralab.adapters.config import INITS, check_alpha
from loralab.errors import AdapterError, ConfigError

PROJECTIONS = ("fastfood", "dense", "sparse")
PRECISIONS = ("fp32", "bf16", "fp16")
SCHEDULERS = ("linear", "cosine", "constant")
METRICS = ("accuracy", "macro_f1", "loss")
REPORT_TO = ("tensorboard", "wandb", "mlflow")
# Fields that change how a run is carried out or logged but not what it computes: --resume may differ in these.
# (Not threads: torch's own threaded GEMMs round differently at another thread count — 1e-5 on MiniLM.)
RESUME_MAY_CHANGE = ("out", "resume", "overwrite", "log_every", "checkpoint_every", "analysis_every",
                     "gradient_checkpointing", "report_to", "save_total_limit")
FLAGS = {"lora.r": "--rank", "subspace.d": "--dim"}  # fields whose flag is not `--<leaf name>`


def flag_of(name: str) -> str:
    """The command-line flag of a config field: ``lora.r`` → ``--rank``, ``max_train`` → ``--max-train``."""
    return FLAGS.get(name, "--" + name.rsplit(".", 1)[-1].replace("_", "-"))


@dataclass
class LoraSettings:
    """The low-rank adapter (methods lora and dora; Hu et al. 2021, §4.1).

    Attributes:
        r: LoRA rank.
        alpha: LoRA alpha (> 0); the update is scaled by alpha/r (alpha/sqrt(r) with rslora).
        dropout: Dropout on the LoRA input path, in [0, 1).
        rank_pattern: {regex: rank} overriding r for modules whose name ends with the regex (PEFT's
            rank_pattern), e.g. {"output\\.dense": 4}; on the command line JSON text or a .json file holding
            one (e.g. `loralab probe`'s rank_pattern.json).
        alpha_pattern: {regex: alpha}, like rank_pattern for alpha.
        rslora: Scale by alpha/sqrt(r) (rank-stabilised LoRA): one learning rate serves every rank.
        init: default (A Kaiming-uniform, B = 0), gaussian, pissa (A, B from W's top-r singular directions;
            W keeps the residual) or olora (from W's QR factors; Linear layers).
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    rank_pattern: dict = field(default_factory=dict)
    alpha_pattern: dict = field(default_factory=dict)
    rslora: bool = False
    init: str = "default"

    def check(self, section: str) -> None:
        _check_int(f"{section}.r", self.r, 1)
        check_alpha(self.alpha, "{}", error=lambda message: ConfigError(message, (f"{section}.alpha",)))
        _check_number(f"{section}.dropout", self.dropout)
        if self.dropout >= 1:
            raise ConfigError("{} must be in [0, 1), got " + f"{self.dropout}.", (f"{section}.dropout",))
        _check_choice(f"{section}.init", self.init, INITS)
        _check_bool(f"{section}.rslora", self.rslora)
        for name in ("rank_pattern", "alpha_pattern"):
            setattr(self, name, _pattern(f"{section}.{name}", getattr(self, name)))
        from loralab.adapters.config import LoraConfig

        try:  # the adapter's own checks of the patterns' keys and values
            LoraConfig(r=self.r, alpha=self.alpha, rank_pattern=self.rank_pattern, alpha_pattern=self.alpha_pattern)
        except AdapterError as err:
            raise ConfigError(str(err).replace("LoraConfig.", f"{section}.")) from None


@dataclass
class SubspaceSettings:
    """The random subspace (methods did and said; Aghajanyan et al. 2021, §3).

    Attributes:
        d: Subspace dimension (SAID's per-tensor scales count towards it).
        projection: Random projection: fastfood, dense or sparse.
    """

    d: int = 1000
    projection: str = "fastfood"

    def check(self, section: str) -> None:
        _check_int(f"{section}.d", self.d, 1)
        _check_choice(f"{section}.projection", self.projection, PROJECTIONS)


SECTIONS = {"lora": LoraSettings, "subspace": SubspaceSettings}


@dataclass
class TrainConfig:
    """A fine-tuning run.

    Attributes:
        model: Model name (minilm, smollm2), a local HF model directory, or a hub id when online.
        data: Dataset name (movie, tweets, amazon, nyt, trec, sms, bbc, chat-qa, shakespeare) or a
            CSV/TSV/JSONL file, split 80/10/10 by --seed unless --val-data and --test-data are given.
        val_data: A file of validation examples (with --test-data: --data is then all training data).
        test_data: A file of test examples (with --val-data).
        method: How to fine-tune; one of the registered methods (`loralab train --help` lists them).
        targets: Comma-separated module names (exact or .suffix), 'all-linear', or a regex. Default: the
            attention query and value projections for lora/dora, every tensor for did/said.
        lora: The adapter's settings (lora, dora): r, alpha, dropout, rank_pattern, alpha_pattern, rslora, init.
        subspace: The subspace's settings (did, said): d, projection.
        epochs: Passes over the training split (--max-steps, when given, ends training earlier).
        max_steps: Stop after this many optimizer steps (the schedule spans them; 0: --epochs decides).
        eval_steps: Validate every this many optimizer steps (0: at the end of every epoch).
        patience: Stop early after this many validations in a row without a better --metric-for-best
            (0: never). The best validation's weights are kept either way.
        min_steps: No early stop before this many optimizer steps.
        metric_for_best: The validation metric that picks the best weights: accuracy, macro_f1 or loss
            (default: accuracy for classification, loss for causal LM).
        lr: Peak learning rate (AdamW).
        batch_size: Examples per optimizer step and process group (the global batch).
        group_by_length: Batch examples of similar length together (less padding; seeded, as HF's
            group_by_length). Default: on for causal LM, off for classification.
        grad_accum: Micro-batches accumulated per optimizer step (each of --batch-size examples).
        warmup: Fraction of the optimizer steps with linear warm-up.
        scheduler: The learning rate after warm-up: linear (decays to 0), cosine (half a cosine to 0) or
            constant.
        weight_decay: AdamW weight decay.
        max_grad_norm: Clip the gradient norm to this (0 turns clipping off).
        max_train: Use at most this many training examples (the first of the seeded split).
        max_eval: Use at most this many validation and test examples.
        max_length: Truncate sequences to this many tokens.
        eval_batch_size: At most this many examples per evaluation batch.
        eval_tokens: At most this many tokens (padded) per evaluation batch.
        train_tokens: At most this many tokens (examples × padded length) in one forward pass while training: a
            batch above it runs as several forwards whose gradients add up to the batch's (the same loss and
            gradient, rounded differently; less memory). Default: 1024 for causal LM, no limit for
            classification.
        precision: fp32; bf16 or fp16 autocast (adapter and optimizer state stay fp32; fp16 with a gradient
            scaler, on CUDA). On a CPU without native bf16 (AVX512-BF16/AMX), bf16 is slower than fp32.
        device: Where to train: auto (a CUDA or MPS device when present, else the CPU), cpu, cuda, cuda:N
            or mps.
        fsdp: Under torchrun, shard the model's parameters over the processes (FSDP2) instead of DDP.
        gradient_checkpointing: Recompute each block's activations in the backward pass instead of keeping
            them: less memory for long sequences, one more forward pass of time; the same result, so a
            --resume may switch it.
        seed: Seed for the split, the initialisation, the data order and dropout.
        out: Run directory: metrics.jsonl, result.json, the adapter (or model), checkpoints. Must be new or
            empty unless --resume or --overwrite.
        overwrite: Delete the run in --out before training (a directory that is not a run is refused).
        checkpoint_every: Also checkpoint every this many optimizer steps (0: only at validations).
        save_total_limit: Checkpoints kept once the run has finished: 1 (the last, default) or 0 (none: the
            trained model or adapter stays; the run can no longer be resumed).
        resume: Continue the run in --out from its last checkpoint (the config must match).
        log_every: Write the training loss to metrics.jsonl every this many steps.
        analysis_every: Every this many steps, log each adapted layer's effective rank and norm of ΔW
            to metrics.jsonl (0: off).
        report_to: Also log to these trackers, comma-separated: tensorboard, wandb, mlflow (each needs its
            package installed).
        threads: torch CPU threads (torch's choice when not given). Part of what a run computes: torch's threaded
            matrix products round differently at another count, so --resume keeps it.
    """

    model: str = "minilm"
    data: str = "movie"
    val_data: Optional[str] = None
    test_data: Optional[str] = None
    method: str = "lora"
    targets: Optional[str] = None
    lora: LoraSettings = field(default_factory=LoraSettings)
    subspace: SubspaceSettings = field(default_factory=SubspaceSettings)
    epochs: int = 3
    max_steps: int = 0
    eval_steps: int = 0
    patience: int = 0
    min_steps: int = 0
    metric_for_best: Optional[str] = None
    lr: float = 5e-4
    batch_size: int = 16
    group_by_length: Optional[bool] = None
    grad_accum: int = 1
    warmup: float = 0.06
    scheduler: str = "linear"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_train: Optional[int] = None
    max_eval: Optional[int] = None
    max_length: int = 128
    eval_batch_size: int = 64
    eval_tokens: int = 16384
    train_tokens: Optional[int] = None
    precision: str = "fp32"
    device: str = "auto"
    fsdp: bool = False
    gradient_checkpointing: bool = False
    seed: int = 0
    out: str = "runs/run"
    overwrite: bool = False
    checkpoint_every: int = 0
    save_total_limit: int = 1
    resume: bool = False
    log_every: int = 10
    analysis_every: int = 0
    report_to: Optional[str] = None
    threads: Optional[int] = None

    def __post_init__(self) -> None:
        from loralab.methods import get_method

        for name, section in SECTIONS.items():
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, _section(name, section, value))
            elif not isinstance(value, section):
                raise ConfigError("{} must be a " + section.__name__ + f" or a dict of its fields, got {value!r}.",
                                  (name,))
            getattr(self, name).check(name)
        method = get_method(self.method)
        self.check_shared()
        if self.lora.init != "default" and not method.trains_adapter:
            raise ConfigError("{} " + self.lora.init + " sets up a LoRA/DoRA adapter; {} " + self.method +
                              " has none.", ("lora.init", "method"))
        if self.lora.init in ("pissa", "olora") and self.analysis_every:
            raise ConfigError("{} measures s·B·A, which for {} " + self.lora.init + " is not the weight change "
                              "(that is s·(B·A − B₀·A₀)); train without one of the two.", ("analysis_every", "lora.init"))
        method.check(self)

    def check_shared(self) -> None:
        """The fields every method reads."""
        for name, choices in (("scheduler", SCHEDULERS), ("precision", PRECISIONS)):
            _check_choice(name, getattr(self, name), choices)
        if self.metric_for_best is not None:
            _check_choice("metric_for_best", self.metric_for_best, METRICS)
        for name in ("epochs", "batch_size", "grad_accum", "max_length", "eval_batch_size", "eval_tokens", "log_every"):
            _check_int(name, getattr(self, name), 1)
        for name in ("max_train", "max_eval", "threads", "train_tokens"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1)
        for name in ("max_steps", "eval_steps", "patience", "min_steps", "checkpoint_every", "analysis_every"):
            _check_int(name, getattr(self, name), 0)
        if self.save_total_limit not in (0, 1):
            raise ConfigError("{} is 1 (keep the last checkpoint) or 0 (none once the run has finished), got "
                              f"{self.save_total_limit!r}.", ("save_total_limit",))
        for name in ("lr", "weight_decay", "max_grad_norm", "warmup"):
            _check_number(name, getattr(self, name))
        if self.lr == 0:
            raise ConfigError("{} must be > 0; try 5e-4 for LoRA or 5e-5 for full fine-tuning.", ("lr",))
        if self.warmup >= 1:
            raise ConfigError("{} is a fraction of the steps in [0, 1), got " + f"{self.warmup}.", ("warmup",))
        for name in ("group_by_length",):
            if getattr(self, name) is not None:
                _check_bool(name, getattr(self, name))
        if (self.val_data is None) != (self.test_data is None):
            raise ConfigError("give {} and {} together (the validation and test files); with neither, --data is split "
                              "80/10/10 by --seed.", ("val_data", "test_data"))
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", str(self.device)):
            raise ConfigError("{} must be auto, cpu, cuda, cuda:N or mps, got " + f"{self.device!r}.", ("device",))
        for tracker in self.trackers():
            _check_choice("report_to", tracker, REPORT_TO)
        if self.resume and self.overwrite:
            raise ConfigError("{} continues the run in {} and {} deletes it; give one of them.",
                              ("resume", "out", "overwrite"))

    def trackers(self) -> list[str]:
        return [t.strip() for t in (self.report_to or "").split(",") if t.strip()]

    def target_spec(self):
        """``targets`` as LoraConfig wants it: 'all-linear', a regex, a list of names, or None (the method's default)."""
        if self.targets is None:
            return None
        text = self.targets.strip()
        if text == "all-linear" or re.search(r"[\\*()\[\]|^$+?]", text):
            return text
        return [t.strip() for t in text.split(",") if t.strip()]

    def with_absolute_paths(self) -> "TrainConfig":
        """The same config with ``data``, the split files and ``model`` made absolute where they are local paths,
        so a run directory can be evaluated or resumed from anywhere."""
        changes = {}
        for name in ("data", "val_data", "test_data", "model"):
            value = getattr(self, name)
            if value is not None and Path(value).exists() and not Path(value).is_absolute():
                changes[name] = str(Path(value).resolve())
        changes["out"] = str(Path(self.out).resolve())
        return replace(self, **changes)

    def ignored_fields(self) -> set[str]:
        """The sections (and method-specific fields) this run's method does not read: a LoRA run's subspace,
        a full run's lora and targets."""
        from loralab.methods import get_method, method_specific_fields

        return method_specific_fields() - set(get_method(self.method).config_fields)

    def flat(self, without: frozenset = frozenset()) -> dict:
        """The config as one level of fields, a section's fields under their own names (r, alpha, d, …);
        sections and fields named in ``without`` left out."""
        data = {}
        for key, value in asdict(self).items():
            if key not in without:
                data.update(value if key in SECTIONS else {key: value})
        return data

    def differences(self, other: "TrainConfig") -> dict[str, tuple]:
        """{field: (self's value, other's value)} for fields that change the result (see RESUME_MAY_CHANGE;
        a section neither run's method reads changes nothing)."""
        ignored = self.ignored_fields() & other.ignored_fields()
        mine, theirs = self.with_absolute_paths(), other.with_absolute_paths()
        changed = {}
        for f in fields(self):
            if f.name in RESUME_MAY_CHANGE or f.name in ignored:
                continue
            a, b = getattr(mine, f.name), getattr(theirs, f.name)
            if f.name in SECTIONS:
                changed.update({f"{f.name}.{k}": (v, getattr(b, k)) for k, v in asdict(a).items() if v != getattr(b, k)})
            elif a != b:
                changed[f.name] = (a, b)
        return changed

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """From a config.json or --config file: sections as objects, or the flat fields of older runs."""
        return cls(**nest(data))


def nest(data: dict) -> dict:
    """Flat section fields (r, alpha, …, d, projection: loralab ≤ 0.1's config.json) moved into their sections;
    unknown fields refused, a field given both flat and in its section refused."""
    known = {f.name for f in fields(TrainConfig)}
    out = {k: (dict(v) if k in SECTIONS and isinstance(v, dict) else v) for k, v in data.items()}
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            if f.name in data and f.name not in known:
                target = out.setdefault(section, {})
                if isinstance(target, dict) and f.name in target:
                    raise ConfigError(f"{f.name} is given twice: flat and in {section}; give it once.")
                if isinstance(target, dict):
                    target[f.name] = out.pop(f.name)
    unknown = sorted(set(out) - known)
    if unknown:
        raise ConfigError(f"unknown fields {unknown} in the config; known: {sorted(known)} (sections: "
                          f"{ {s: [f.name for f in fields(c)] for s, c in SECTIONS.items()} }).")
    return out


def _section(name: str, cls, values: dict):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown fields {unknown} in section {name}; it has {sorted(known)}.")
    return cls(**values)


def _pattern(name: str, value) -> dict:
    """A rank/alpha pattern: a dict, JSON text of one, or the path of a .json file holding one."""
    if value is None:
        return {}
    shown = repr(value)
    if isinstance(value, str):
        text = value
        if not value.lstrip().startswith("{") and value.endswith(".json"):
            try:
                text = Path(value).read_text()
            except OSError as err:
                raise ConfigError("{} " + value + f": cannot read the file ({err.strerror}); give a JSON object like "
                                  "'{{\"query\": 4}}' or the path of a .json file holding one.", (name,)) from None
        shown = repr(text)
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError("{} must be a JSON object like '{{\"query\": 4}}' or a .json file holding one, got "
                              + repr(text).replace("{", "{{").replace("}", "}}") + f" ({err}).", (name,)) from None
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ConfigError("{} must be a JSON object {{regex: number}}, got " + shown.replace("{", "{{")
                          .replace("}", "}}") + ".", (name,))
    return value


def _check_choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError("{} must be one of " + str(choices) + f", got {value!r}.", (name,))


def _check_int(name: str, value, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer ≥ {minimum}"
        raise ConfigError("{} must be " + kind + f", got {value!r}.", (name,))


def _check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ConfigError("{} must be true or false, got " + f"{value!r}.", (name,))


def _check_number(name: str, value, positive: bool = False) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0 \
            or (positive and value == 0):
        bound = "> 0" if positive else "≥ 0"
        raise ConfigError("{} must be a finite number " + bound + f", got {value!r}.", (name,))


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
