"""`AdapterHost`: the state every adapted module shares — active adapters, a disabled switch, routing.

`LoraLayer` (a layer with low-rank adapters) and `ModulesToSave` (a module with one trainable
copy per adapter) both hold named adapters; `manage.py` switches, disables and routes them
through this common state.
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch
from torch import nn

from loralab.errors import AdapterError

BASE = "__base__"  # routing name for "no adapter" in a mixed batch


class AdapterHost(nn.Module):
    """Base class of adapted modules: ``active`` adapters run, unless ``disabled``; ``route`` (set by
    `loralab.routing`) names one adapter per example of the batch instead."""

    def __init__(self):
        super().__init__()
        self.active: list[str] = []
        self.disabled = False
        self.route: Optional[list[str]] = None

    @property
    def adapter_names(self) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def route_names(self, batch: int) -> list[str]:
        """The distinct names in ``route`` (adapters or BASE), in first-seen order; checks its length."""
        if len(self.route) != batch:
            raise AdapterError(
                f"routing names {len(self.route)} adapters but the batch has {batch} examples; "
                "give one adapter name (or '__base__') per example."
            )
        return list(dict.fromkeys(self.route))

    def route_rows(self, name: str, device: torch.device) -> torch.Tensor:
        """Indices of the examples routed to ``name``."""
        return torch.tensor([i for i, n in enumerate(self.route) if n == name], device=device)

    def route_groups(self, batch: int, device: torch.device) -> Iterator[tuple[str, torch.Tensor]]:
        """(adapter name or BASE, indices of its examples) for each name in ``route``, in first-seen order."""
        for name in self.route_names(batch):
            yield name, self.route_rows(name, device)


def fsdp_classes() -> tuple[type, type]:
    """(FSDP1's wrapper class, FSDP2's module mixin), or two placeholder classes where torch has none."""
    try:
        from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
    except ImportError:  # pragma: no cover - a torch without distributed
        return type("NoFSDP", (), {}), type("NoFSDP2", (), {})
    return FullyShardedDataParallel, FSDPModule


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside torch.compile's, (Distributed)DataParallel's and FSDP1's wrappers — where the adapters,
    their configs and the module names PEFT's keys use live — or ``model`` itself."""
    fsdp1, _ = fsdp_classes()
    while True:
        if isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel, fsdp1)):
            model = model.module
        else:
            return model


def sharding(model: nn.Module) -> Optional[str]:
    """"FSDP1" or "FSDP2" when the model (or a module inside it) is sharded that way, else None."""
    fsdp1, fsdp2 = fsdp_classes()
    modules = list(model.modules())
    if any(isinstance(m, fsdp1) for m in modules):
        return "FSDP1"
    return "FSDP2" if any(isinstance(m, fsdp2) for m in modules) else None
