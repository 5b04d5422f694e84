"""Where loralab finds the adapters on a model: adapted modules and configs by name."""

from __future__ import annotations

import functools
import re
from typing import Iterator, Union

from torch import nn

from loralab.adapters.config import LoraConfig
from loralab.adapters.host import BASE, AdapterHost, fsdp_classes, sharding, unwrap
from loralab.adapters.lora import LoraLayer
from loralab.adapters.modules_to_save import ModulesToSave
from loralab.errors import AdapterError


def in_model_order(paths) -> list[str]:
    """Module paths sorted as a model lists its blocks: 'layers.2.…' before 'layers.10.…' (the digit runs
    compare as numbers). Adapter files list their keys alphabetically, which puts layer 10 before layer 2."""
    return sorted(paths, key=lambda path: [int(part) if part.isdigit() else part
                                           for part in re.split(r"(\d+)", path)])


def on_inner_module(fn):
    """Decorator for the public functions that read adapters: their first argument is `unwrap`-ped, so
    ``ll.save_adapter(torch.compile(model), ...)`` or a DDP-wrapped model work as the plain model does. On
    an FSDP1-wrapped model the call runs with the whole parameters gathered (on every process: call it on
    all of them); FSDP2's sharded tensors are gathered where they are read (`io.peft_format.whole`)."""
    @functools.wraps(fn)
    def call(model, *args, **kwargs):
        fsdp1, _ = fsdp_classes()
        if isinstance(model, fsdp1):
            with fsdp1.summon_full_params(model, writeback=False):
                return fn(unwrap(model), *args, **kwargs)
        return fn(unwrap(model), *args, **kwargs)
    return call


def on_unsharded_module(fn):
    """Decorator for the public functions that change a model's modules or weights (inject, load, merge, delete):
    as `on_inner_module`, but a model sharded by FSDP is refused — its parameters are pieces on every process."""
    @functools.wraps(fn)
    def call(model, *args, **kwargs):
        kind = sharding(model)
        if kind:
            raise AdapterError(f"{fn.__name__} changes the model's layers or weights, which {kind} has sharded over "
                               "the processes. Do it before sharding (inject and load adapters, then wrap), or after: "
                               "save the adapter (ll.save_adapter, on every process) and merge it into an unsharded "
                               "copy of the base model in one process.")
        return fn(unwrap(model), *args, **kwargs)
    return call


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
    if new and (hasattr(nn.ParameterDict(), name) or hasattr(nn.ModuleDict(), name)):
        raise AdapterError(f"adapter name {name!r} is a method or attribute of torch's ModuleDict/ParameterDict, which "
                           f"hold the adapters' weights; pick another name, e.g. {name + '_adapter'!r}.")
    exists = name in adapter_configs(model)
    if new and exists:
        raise AdapterError(f"adapter {name!r} already exists; pick another name or ll.delete_adapter(model, {name!r}).")
    if not new and not exists:
        raise AdapterError(f"no adapter named {name!r}; adapters on this model: {sorted(adapter_configs(model))}.")
