"""Reading and writing adapters on disk (PEFT format: safetensors + JSON, never pickle)."""

from typing import TYPE_CHECKING

from loralab.lazy import lazy_exports

if TYPE_CHECKING:
    from loralab.io.peft_format import adapter_state_dict, load_adapter, read_adapter_dir, save_adapter

__getattr__, __dir__ = lazy_exports(__name__, dict.fromkeys(
    ["adapter_state_dict", "load_adapter", "read_adapter_dir", "save_adapter"], "loralab.io.peft_format"))

__all__ = ["adapter_state_dict", "load_adapter", "read_adapter_dir", "save_adapter"]
