"""loralab: low-rank adaptation of pretrained transformers, and measurements of why it works.

    import loralab as ll
    names = ll.inject(model, ll.LoraConfig(r=8, alpha=16, targets=["query", "value"]))
    ... train ...
    ll.save_adapter(model, "adapter/")          # PEFT on-disk format
"""

from typing import TYPE_CHECKING

from loralab.lazy import lazy_exports

__version__ = "0.1.0"

if TYPE_CHECKING:
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

# Public names → the module that defines them, imported on first use, so `loralab --version` and
# `loralab train --help` start without loading torch.
_EXPORTS = {
    **dict.fromkeys(["LoraConfig", "LoraLayer", "ModulesToSave", "active_adapters", "default_targets", "delete_adapter",
                     "disabled", "frozen", "inject", "match_targets", "merge", "merge_and_unload", "routing",
                     "set_active", "set_trainable", "trainable_parameters", "unmerge"], "loralab.adapters"),  # its table
    "AdapterError": "loralab.errors",
    **dict.fromkeys(["adapter_state_dict", "load_adapter", "save_adapter"], "loralab.io"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "AdapterError", "LoraConfig", "LoraLayer", "ModulesToSave", "active_adapters", "adapter_state_dict",
    "default_targets", "delete_adapter", "disabled", "frozen", "inject", "load_adapter", "match_targets", "merge",
    "merge_and_unload", "routing", "save_adapter", "set_active", "set_trainable", "trainable_parameters", "unmerge",
]
