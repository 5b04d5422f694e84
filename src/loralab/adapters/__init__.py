"""LoRA and DoRA adapters: layers, injection, management and merging."""

from typing import TYPE_CHECKING

from loralab.lazy import lazy_exports

if TYPE_CHECKING:
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

__getattr__, __dir__ = lazy_exports(__name__, {
    "frozen": "loralab.adapters.cache",
    "LoraConfig": "loralab.adapters.config",
    "default_targets": "loralab.adapters.inject",
    "inject": "loralab.adapters.inject",
    "match_targets": "loralab.adapters.inject",
    "LoraLayer": "loralab.adapters.lora",
    "active_adapters": "loralab.adapters.manage",
    "delete_adapter": "loralab.adapters.manage",
    "disabled": "loralab.adapters.manage",
    "routing": "loralab.adapters.manage",
    "set_active": "loralab.adapters.manage",
    "set_trainable": "loralab.adapters.manage",
    "trainable_parameters": "loralab.adapters.manage",
    "merge": "loralab.adapters.merge",
    "merge_and_unload": "loralab.adapters.merge",
    "unmerge": "loralab.adapters.merge",
    "ModulesToSave": "loralab.adapters.modules_to_save",
})

__all__ = [
    "LoraConfig", "LoraLayer", "ModulesToSave", "default_targets", "inject", "match_targets", "active_adapters", "delete_adapter",
    "disabled", "frozen", "routing", "set_active", "set_trainable", "trainable_parameters", "merge", "merge_and_unload",
    "unmerge",
]
