"""torch.compile of an adapted model: no graph break comes from loralab, and the gradients are eager's."""

from __future__ import annotations

import functools

import pytest
import torch
from torch._dynamo.utils import counters

import loralab as ll
from conftest import build, inputs


def compiled_step(model, ids, labels):
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, backend="aot_eager")  # dynamo and autograd tracing, no code generation
    compiled(input_ids=ids, labels=labels).loss.backward()
    return sum(counters["graph_break"].values())


@functools.lru_cache(maxsize=1)
def base_breaks() -> int:
    model = build("bert").train()
    return compiled_step(model, inputs(), torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("dora", [False, True])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_no_graph_break_from_loralab(dora, dropout):
    """Graph breaks of the adapted model = those of the plain model (the thread-count chunking, the inference
    check and DoRA's zero-magnitude rows used to break the graph: 13 breaks with LoRA on q/v, 15 with DoRA)."""
    model = build("bert")
    ll.inject(model, ll.LoraConfig(r=4, alpha=8, targets=["query", "value"], dora=dora, dropout=dropout))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    model.train()
    ids, labels = inputs(), torch.tensor([0, 1, 2])
    assert compiled_step(model, ids, labels) == base_breaks()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    if dropout:  # compiled dropout draws its own mask (a dense one): gradients exist and are finite
        assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads.values())
        return
    model.zero_grad()
    model(input_ids=ids, labels=labels).loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(grads[name], p.grad, atol=1e-5, rtol=1e-4)
