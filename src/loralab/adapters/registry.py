"""Where loralab finds the adapters on a model: adapted modules and configs by name."""

from __future__ import annotations

from typing import Iterator, Union

from torch import nn

from loralab.adapters.config import LoraConfig
from loralab.adapters.host import BASE, AdapterHost
from loralab.adapters.lora import LoraLayer
from loralab.adapters.modules_to_save import ModulesToSave
from loralab.errors import AdapterError


def adapter_modules(model: nn.Module) -> Iterator[tuple[str, Union[LoraLayer, ModulesToSave]]]:
    """Every adapted module of ``model`` with its name."""
    for name, module in model.named_modules():
        if isinstance(module, AdapterHost):
            yield name, module


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoraLayer]]:
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            yield name, module


def adapter_configs(model: nn.Module) -> dict[str, LoraConfig]:
    """The configs of the adapters on ``model``, by name (kept as a plain attribute)."""
    if "_loralab_configs" not in model.__dict__:
        model.__dict__["_loralab_configs"] = {}
    return model.__dict__["_loralab_configs"]


def check_adapter_name(model: nn.Module, name: str, new: bool) -> None:
    if not isinstance(name, str) or not name or "." in name or name == BASE:
        raise AdapterError(f"adapter name must be a non-empty string without '.', not {BASE!r}; got {name!r}.")
    exists = name in adapter_configs(model)
    if new and exists:
        raise AdapterError(f"adapter {name!r} already exists; pick another name or ll.delete_adapter(model, {name!r}).")
    if not new and not exists:
        raise AdapterError(f"no adapter named {name!r}; adapters on this model: {sorted(adapter_configs(model))}.")
