"""loralab: low-rank adaptation of pretrained transformers, and measurements of why it works.

    import loralab as ll
    names = ll.inject(model, ll.LoraConfig(r=8, alpha=16, targets=["query", "value"]))
    ... train ...
    ll.save_adapter(model, "adapter/")          # PEFT on-disk format
"""

from loralab.adapters import (
    LoraConfig,
    LoraLayer,
    ModulesToSave,
    active_adapters,
    default_targets,
    delete_adapter,
    disabled,
    frozen,
    inject,
    match_targets,
    merge,
    merge_and_unload,
    routing,
    set_active,
    set_trainable,
    trainable_parameters,
    unmerge,
)
from loralab.errors import AdapterError
from loralab.io import adapter_state_dict, load_adapter, save_adapter

__version__ = "0.1.0"

__all__ = [
    "AdapterError", "LoraConfig", "LoraLayer", "ModulesToSave", "active_adapters", "adapter_state_dict",
    "default_targets", "delete_adapter", "disabled", "frozen", "inject", "load_adapter", "match_targets", "merge",
    "merge_and_unload", "routing", "save_adapter", "set_active", "set_trainable", "trainable_parameters", "unmerge",
]
