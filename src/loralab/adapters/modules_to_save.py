"""`ModulesToSave`: a module (e.g. a new classifier head) trained fully, one copy per adapter.

PEFT's ``modules_to_save``: the original module stays frozen as
``original_module``; each adapter gets its own trainable copy in
``modules_to_save[name]`` and the active adapter's copy runs in the forward pass.
On disk the copy is saved under the original module's path, without the wrapper.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from loralab.adapters.host import BASE, AdapterHost


class ModulesToSave(AdapterHost):
    """Frozen ``original_module`` plus a trainable copy per adapter in ``modules_to_save``."""

    def __init__(self, original: nn.Module):
        super().__init__()
        self.training = original.training
        self.original_module = original
        self.modules_to_save = nn.ModuleDict()

    @property
    def adapter_names(self) -> list[str]:
        return list(self.modules_to_save.keys())

    def add_adapter(self, name: str) -> None:
        self.original_module.requires_grad_(False)
        self.modules_to_save[name] = copy.deepcopy(self.original_module)

    def delete_adapter(self, name: str) -> None:
        if name in self.modules_to_save:
            del self.modules_to_save[name]
        self.active = [a for a in self.active if a != name]

    def adapter_params(self, name: str) -> list[nn.Parameter]:
        return list(self.modules_to_save[name].parameters())

    def current(self) -> nn.Module:
        """The module that runs now: the first active adapter's copy, else the original."""
        if not self.disabled:
            for name in self.active:
                if name in self.modules_to_save:
                    return self.modules_to_save[name]
        return self.original_module

    def forward(self, x: torch.Tensor, *args, **kwargs):
        if self.route is None or self.disabled:
            return self.current()(x, *args, **kwargs)
        out = None
        for name, rows in self.route_groups(x.shape[0], x.device):
            module = self.modules_to_save[name] if name != BASE and name in self.modules_to_save else self.original_module
            part = module(x.index_select(0, rows), *args, **kwargs)
            if out is None:
                out = part.new_zeros((x.shape[0],) + part.shape[1:])
            out = out.index_copy(0, rows, part)
        return out
