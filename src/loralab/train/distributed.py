"""Training over several processes (torchrun): DDP or FSDP2 around the run's `Objective`, and moving tensors
and Python values between the processes.

* DDP (the default): every process holds the whole model; gradients are averaged after each backward.
* FSDP2 (``--fsdp``, `torch.distributed.fsdp.fully_shard`): each transformer block and the root are
  sharded, so a process holds 1/world of every weight between uses. Parameters and optimizer state are
  DTensors; `full_tensor` gathers one (a collective: every process calls it, in the same order), `like`
  scatters a full tensor back into a parameter's layout.

Process groups: NCCL between CUDA devices, gloo between CPUs (`devices.process_group_backend`).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from loralab.errors import ConfigError

BLOCK_LISTS = ("layers", "layer", "h", "blocks", "block")  # where Hugging Face models keep their blocks


def is_dtensor(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor (gathered from every process), or ``t`` itself."""
    return t.full_tensor() if is_dtensor(t) else t


def full_state(value: Any) -> Any:
    """``value`` (a state dict, nested) with every DTensor gathered whole."""
    if isinstance(value, dict):
        return {k: full_state(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(full_state(v) for v in value)
    return full_tensor(value) if torch.is_tensor(value) else value


def like(reference: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` (whole) laid out as ``reference``: scattered into its shards when it is a DTensor."""
    if not is_dtensor(reference):
        return value.to(reference.device)
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(value.to(reference.device), reference.device_mesh, reference.placements)


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a transformer (the longest ModuleList named layers, layer, h, blocks or block)."""
    lists = [m for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and name.rsplit(".", 1)[-1]
             in BLOCK_LISTS]
    return list(max(lists, key=len)) if lists else []


def wrap(objective: nn.Module, device: torch.device, world: int, fsdp: bool) -> nn.Module:
    """The module the trainer calls: ``objective`` itself (one process), DDP around it, or it sharded by FSDP2."""
    if world == 1:
        if fsdp:
            raise ConfigError("{} shards a model over the processes of torchrun; this is one process. Launch with "
                              "torchrun --nproc_per_node=N, or drop it.", ("fsdp",))
        return objective
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        blocks = transformer_blocks(objective)
        if not blocks:
            raise ConfigError("{} shards each transformer block; this model has no list of blocks loralab knows "
                              f"({', '.join(BLOCK_LISTS)}). Train it with DDP (drop the flag).", ("fsdp",))
        for block in blocks:
            fully_shard(block)
        fully_shard(objective)
        return objective
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(objective, device_ids=ids)


def sync_gradients(net: nn.Module, sync: bool):
    """Accumulate without averaging over the processes (all micro-batches of an optimizer step but the last)."""
    if isinstance(net, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext() if sync else net.no_sync()
    if hasattr(net, "set_requires_gradient_sync"):  # FSDP2
        net.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


@contextlib.contextmanager
def unsharded(module: nn.Module):
    """Inside the block every FSDP2-sharded submodule holds its whole parameters (a collective on entry and
    exit): what saving the trained model needs. Nothing to do without FSDP."""
    sharded = [m for m in module.modules() if hasattr(m, "unshard") and hasattr(m, "reshard")]
    for m in sharded:
        m.unshard()
    try:
        yield module
    finally:
        for m in sharded:
            m.reshard()


def gather(value: Any, world: int) -> list:
    """``value`` of every process, in rank order (one process: [value])."""
    if world == 1:
        return [value]
    values: list = [None] * world
    dist.all_gather_object(values, value)
    return values


def mean(value: torch.Tensor, world: int) -> torch.Tensor:
    """The average of a scalar tensor over the processes."""
    if world > 1:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= world
    return value
