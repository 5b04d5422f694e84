"""Values derived from weights (DoRA's row norms, stacked routing factors, SAID's θ), kept only while the
weights are declared constant.

A cache keyed on version counters or storage addresses cannot see every way a weight changes: writes
through ``.data``, ``vector_to_parameters`` into a reused buffer, ``.numpy()`` views, fused optimizer
kernels, ``untyped_storage().copy_``. So nothing is cached by default — every forward recomputes what it
derives — and a caller that knows the weights will not change for a while says so:

    with ll.frozen(model):          # evaluation, generation, serving
        for batch in batches:
            model(**batch)          # DoRA norms, routing factors, SAID's θ computed once per module

Inside the block each module's `DerivedCache` keeps what it computes; on exit everything is dropped. As a
guard inside the block, a value is also recomputed when a weight it came from changed in a way torch
tracks (version counter, storage) — but the contract is the block's: weights do not change inside it.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Hashable, Iterator, Optional

import torch
from torch import nn

from loralab.adapters.host import unwrap


def _signature(tensors: tuple[torch.Tensor, ...]) -> Optional[tuple]:
    """What torch can tell about a tensor changing: its version counter, storage and dtype. None for
    inference tensors, which have no version counter."""
    if any(t.is_inference() for t in tensors):
        return None
    return tuple((t._version, t.data_ptr(), t.dtype) for t in tensors)


class DerivedCache:
    """Per-module store of values derived from its weights, live only inside `frozen`.

    ``get(key, tensors, compute)`` returns ``compute()`` — computed on every call outside `frozen`, and
    once per key inside it (again if one of ``tensors`` visibly changed).
    """

    def __init__(self) -> None:
        self.depth = 0
        self.values: dict[Hashable, tuple] = {}

    @property
    def live(self) -> bool:
        return self.depth > 0

    def get(self, key: Hashable, tensors: tuple[torch.Tensor, ...], compute: Callable[[], object]):
        if not self.depth:
            return compute()
        signature = _signature(tensors)
        held = self.values.get(key)
        if held is not None and signature is not None and held[0] == signature:
            return held[1]
        value = compute()
        if signature is not None:
            self.values[key] = (signature, value)
        return value

    def clear(self) -> None:
        self.values.clear()

    def enter(self) -> None:
        self.depth += 1

    def exit(self) -> None:
        self.depth -= 1
        if not self.depth:
            self.values.clear()


def caches(model: nn.Module) -> Iterator[DerivedCache]:
    """Every `DerivedCache` held by ``model`` or its submodules (attribute ``derived``)."""
    for module in model.modules():
        cache = module.__dict__.get("derived")
        if isinstance(cache, DerivedCache):
            yield cache


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block the weights of ``model`` do not change, so values derived from them are computed
    once (see the module docstring). Nests; leaving the outermost block drops every cached value."""
    held = list(caches(unwrap(model)))
    for cache in held:
        cache.enter()
    try:
        yield model
    finally:
        for cache in held:
            cache.exit()
