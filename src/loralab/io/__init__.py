"""Reading and writing adapters on disk (PEFT format: safetensors + JSON, never pickle)."""

from loralab.io.peft_format import adapter_state_dict, load_adapter, read_adapter_dir, save_adapter

__all__ = ["adapter_state_dict", "load_adapter", "read_adapter_dir", "save_adapter"]
