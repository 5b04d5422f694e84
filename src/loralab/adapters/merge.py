"""Merge adapters into the base weights, undo it, or unload the adapters for good.

Merging is explicit and idempotent: `merge` twice is `merge` once, `unmerge`
restores the unmerged weights up to float rounding (LoRA: W ← W + s·B·A and back;
DoRA: W ← m/‖W + s·B·A‖ ⊙ (W + s·B·A), undone with the row norms kept in the
layer's ``dora_norm`` buffers). A merge whose result would be non-finite is
refused and leaves every weight as it was.
"""

from __future__ import annotations

import torch
from torch import nn

from loralab.adapters.checkpointing import remove_checkpoint_hooks
from loralab.adapters.lora import LoraLayer
from loralab.adapters.manage import active_adapters
from loralab.adapters.modules_to_save import ModulesToSave
from loralab.adapters.registry import adapter_configs, adapter_modules, lora_layers, on_unsharded_module
from loralab.errors import AdapterError


def _owners(model: nn.Module) -> dict[int, list[str]]:
    """For each parameter (by id), the names of the modules that hold it directly."""
    owners: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        for param in module.parameters(recurse=False):
            owners.setdefault(id(param), []).append(name)
    return owners


@on_unsharded_module
def merge(model: nn.Module) -> dict:
    """Fold the active adapters into the base weights of every adapted layer.

    Refused (nothing changes) for stacked adapters that include DoRA, for a weight
    tied to another module (merging would change both), and for non-finite results.
    W + ΔW is computed in float32 (or wider) and written back once, so a bfloat16/float16
    base is rounded once per merge (and unmerge, which subtracts, rounds again).

    Returns:
        {"merged": adapter names, "layers": layers changed, "rounded_to": the base dtype when it
        is narrower than float32, else None}.
    """
    names = active_adapters(model)
    if len(names) > 1 and any(adapter_configs(model)[n].dora for n in names):
        raise AdapterError(f"merging stacked adapters {names} with DoRA among them is not defined; merge one at a time.")
    owners = _owners(model)
    for path, layer in lora_layers(model):
        others = [o for o in dict.fromkeys(owners[id(layer.weight)]) if o != path]
        if others and any(n in layer.adapter_names and n not in layer.merged for n in names):
            raise AdapterError(
                f"{path}.weight is tied to {others}; merging would change them too. Keep the adapter "
                f"unmerged, or untie first, e.g. model.{others[0]}.weight = nn.Parameter(model.{others[0]}.weight.clone())."
            )
    plan = [(layer, [n for n in names if n in layer.adapter_names]) for _, layer in lora_layers(model)]
    for layer, layer_names in plan:  # every check first: a refused merge changes nothing
        layer.check_merge(layer_names)
    changed = [layer for layer, layer_names in plan if any(n not in layer.merged for n in layer_names)]
    for layer, layer_names in plan:
        layer.merge(layer_names)
    narrow = sorted({str(layer.weight.dtype).removeprefix("torch.") for layer in changed
                     if layer.weight.dtype in (torch.bfloat16, torch.float16)})
    return {"merged": names, "layers": len(changed), "rounded_to": ", ".join(narrow) or None}


@on_unsharded_module
def unmerge(model: nn.Module) -> None:
    """Restore the base weights of every merged layer (a no-op when nothing is merged)."""
    for _, layer in lora_layers(model):
        layer.unmerge()


@on_unsharded_module
def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge the active adapters and replace every adapted module by a plain one.

    Returns the same model object, now free of loralab modules: LoRA layers become
    Linear / Conv1D / Embedding with merged weights; a ``modules_to_save`` wrapper
    becomes the active adapter's copy (or the original module when none is active).
    """
    merge(model)
    for name, module in list(adapter_modules(model)):
        if isinstance(module, LoraLayer):
            plain = module.to_base_module()
        else:
            plain = module.current()
        model.set_submodule(name, plain)
    model.__dict__.pop("_loralab_configs", None)
    model.__dict__.pop("_loralab_active", None)
    remove_checkpoint_hooks(model)
    return model


__all__ = ["merge", "unmerge", "merge_and_unload", "ModulesToSave"]
