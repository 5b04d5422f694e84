"""LoRA and DoRA adapters: layers, injection, management and merging."""

from loralab.adapters.cache import frozen
from loralab.adapters.config import LoraConfig
from loralab.adapters.inject import default_targets, inject, match_targets
from loralab.adapters.lora import LoraLayer
from loralab.adapters.manage import (
    active_adapters,
    delete_adapter,
    disabled,
    routing,
    set_active,
    set_trainable,
    trainable_parameters,
)
from loralab.adapters.merge import merge, merge_and_unload, unmerge
from loralab.adapters.modules_to_save import ModulesToSave

__all__ = [
    "LoraConfig", "LoraLayer", "ModulesToSave", "default_targets", "inject", "match_targets", "active_adapters", "delete_adapter",
    "disabled", "frozen", "routing", "set_active", "set_trainable", "trainable_parameters", "merge", "merge_and_unload",
    "unmerge",
]
