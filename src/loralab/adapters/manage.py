"""Many named adapters on one model: activate, stack, disable, delete, route per example."""

from __future__ import annotations

import contextlib
from typing import Iterator, Union

from torch import nn

from loralab.adapters.host import BASE
from loralab.adapters.lora import LoraLayer
from loralab.adapters.modules_to_save import ModulesToSave
from loralab.adapters.registry import (
    adapter_configs,
    adapter_modules,
    check_adapter_name,
    lora_layers,
    on_inner_module,
    on_unsharded_module,
)
from loralab.errors import AdapterError


def _refuse_if_merged(model: nn.Module, action: str) -> None:
    merged = sorted({n for _, layer in lora_layers(model) for n in layer.merged})
    if merged:
        raise AdapterError(f"cannot {action} while adapters {merged} are merged; call ll.unmerge(model) first.")


@on_inner_module
def active_adapters(model: nn.Module) -> list[str]:
    """The adapters that run in the forward pass, in order."""
    return list(model.__dict__.get("_loralab_active", []))


@on_inner_module
def set_active(model: nn.Module, names: Union[str, list[str]]) -> None:
    """Run exactly ``names`` (stacked: their updates add up); ``[]`` runs the base model.

    Trainability does not change: `inject` makes its adapter trainable and
    `load_adapter` loads frozen unless asked otherwise.
    """
    names = [names] if isinstance(names, str) else list(names)
    for name in names:
        check_adapter_name(model, name, new=False)
    _refuse_if_merged(model, "change the active adapters")
    for _, module in adapter_modules(model):
        module.active = [n for n in names if n in module.adapter_names]
    model.__dict__["_loralab_active"] = names


@on_unsharded_module
def delete_adapter(model: nn.Module, name: str) -> None:
    """Remove adapter ``name``; layers left with no adapter go back to their plain base module."""
    check_adapter_name(model, name, new=False)
    _refuse_if_merged(model, f"delete adapter {name!r}")
    for module_name, module in list(adapter_modules(model)):
        if name not in module.adapter_names:
            continue
        module.delete_adapter(name)
        if not module.adapter_names:
            plain = module.to_base_module() if isinstance(module, LoraLayer) else module.original_module
            model.set_submodule(module_name, plain)
    del adapter_configs(model)[name]
    model.__dict__["_loralab_active"] = [n for n in active_adapters(model) if n != name]


@on_inner_module
@contextlib.contextmanager
def disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block the model behaves as its base model (every adapter off)."""
    _refuse_if_merged(model, "disable adapters")
    modules = [m for _, m in adapter_modules(model)]
    for module in modules:
        module.disabled = True
    try:
        yield model
    finally:
        for module in modules:
            module.disabled = False


@on_inner_module
@contextlib.contextmanager
def routing(model: nn.Module, per_example: list[str]) -> Iterator[nn.Module]:
    """Inside the block example i of a batch runs adapter ``per_example[i]`` (``"__base__"``: none).

    Every adapted layer sees the batch as dimension 0, so this fits models whose
    adapted layers take (batch, ...) inputs — all Hugging Face transformers do.
    """
    if isinstance(per_example, str) or not len(per_example):
        raise AdapterError("routing needs a list with one adapter name (or '__base__') per example.")
    for name in dict.fromkeys(per_example):
        if name != BASE:
            check_adapter_name(model, name, new=False)
    _refuse_if_merged(model, "route a mixed batch")
    modules = [m for _, m in adapter_modules(model)]
    for module in modules:
        module.route = list(per_example)
    try:
        yield model
    finally:
        for module in modules:
            module.route = None


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared (tied) tensors count once."""
    seen: dict[int, nn.Parameter] = {}
    for param in model.parameters():
        seen[id(param)] = param
    total = sum(p.numel() for p in seen.values())
    trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
    return trainable, total


@on_inner_module
def set_trainable(model: nn.Module, names: Union[str, list[str]]) -> None:
    """Make exactly the parameters of adapters ``names`` trainable; freeze everything else."""
    names = [names] if isinstance(names, str) else list(names)
    for name in names:
        check_adapter_name(model, name, new=False)
    model.requires_grad_(False)
    for _, module in adapter_modules(model):
        for name in names:
            if name in module.adapter_names:
                for param in module.adapter_params(name):
                    param.requires_grad_(True)


__all__ = [
    "active_adapters", "set_active", "delete_adapter", "disabled", "routing", "trainable_parameters",
    "set_trainable", "ModulesToSave",
]
