"""`TrainingMethod`, the protocol every training method follows, and the registry of methods.

A method answers five questions for the trainer and for finished runs:

* ``prepare``: which module trains, and which of its parameters (``requires_grad``);
* ``describe``: what `result.json` records about it (adapter config, subspace size);
* ``save`` / ``load``: what a run directory keeps, and how to rebuild the trained model;
* ``merge``: the trained model as a plain Hugging Face model.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Optional

from loralab.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from loralab.train.config import TrainConfig

_METHODS: dict[str, "TrainingMethod"] = {}


class TrainingMethod:
    """Base class; subclasses set ``name`` and ``summary`` and override what differs."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    saved_as: ClassVar[str] = ""  # the run subdirectory `save` writes
    trains_adapter: ClassVar[bool] = False  # a low-rank adapter, so the adapter flags (--init) apply
    # the TrainConfig fields only some methods read: a run of another method ignores them (`compare` shows "–")
    config_fields: ClassVar[tuple[str, ...]] = ()

    def check(self, cfg: "TrainConfig") -> None:
        """Refuse method-specific config values (raise `ConfigError`); nothing by default."""

    def prepare(self, model: nn.Module, cfg: "TrainConfig", task: str) -> nn.Module:
        """Return the module to train (``model`` itself or a wrapper); set ``requires_grad``."""
        raise NotImplementedError

    def describe(self, trained: nn.Module, cfg: "TrainConfig") -> dict:
        """Extra fields for result.json."""
        return {}

    def save(self, trained: nn.Module, tokenizer, out: Path, write: bool = True, training: Optional[dict] = None) -> Path:
        """Write what rebuilds the trained model into ``out / saved_as``; return that path. Under FSDP every
        process calls it (the shards are gathered) and only the one with ``write`` writes; ``training``
        describes the run for a model card (data, metrics, command)."""
        raise NotImplementedError

    def load(self, cfg: "TrainConfig", run_dir: Path, task: str, num_labels: Optional[int]):
        """(trained model ready to evaluate, tokenizer) from a finished run directory."""
        from loralab import models

        model, tokenizer = models.load(cfg.model, task, num_labels=num_labels,
                                       attn_implementation=models.attention_for(cfg.precision))  # as trained
        return self.attach(model, cfg, run_dir / self.saved_as), tokenizer

    def attach(self, model: nn.Module, cfg: "TrainConfig", saved: Path) -> nn.Module:
        """Put what `save` wrote back onto a freshly loaded base ``model``."""
        raise NotImplementedError

    def merge(self, trained: nn.Module) -> nn.Module:
        """The trained model as a plain module (the update folded into the weights)."""
        return trained


def register(cls: type[TrainingMethod]) -> type[TrainingMethod]:
    """Class decorator: make ``cls.name`` available to `get_method`, the CLI and the config."""
    if not cls.name or cls.name in _METHODS:
        raise ValueError(f"training method name {cls.name!r} is empty or already registered")
    _METHODS[cls.name] = cls()
    return cls


def method_specific_fields() -> set[str]:
    """Every TrainConfig field some method reads and another ignores (`TrainingMethod.config_fields`)."""
    return {name for method in _METHODS.values() for name in method.config_fields}


def method_names() -> tuple[str, ...]:
    return tuple(_METHODS)


def get_method(name: str) -> TrainingMethod:
    if name not in _METHODS:
        raise ConfigError(f"--method must be one of {method_names()}, got {name!r}.")
    return _METHODS[name]
