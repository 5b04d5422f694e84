"""Gradient checkpointing (Hugging Face's ``gradient_checkpointing_enable``) on an injected model.

Reentrant checkpointing passes gradients into a block only when its input requires grad; with
frozen embeddings PEFT then fails unless the user calls ``enable_input_require_grads``. loralab's
gradients must be the same with and without checkpointing, in either order of the two calls.
"""

from __future__ import annotations

import pytest
import torch

import loralab as ll
from conftest import build, inputs
from loralab.adapters.registry import lora_layers


def injected(arch: str, dora: bool, checkpoint_first: dict | None = None) -> torch.nn.Module:
    """``arch`` "bert+embedding": LoRA on the word embeddings too (then their output needs grad anyway)."""
    arch, embedding = arch.split("+")[0], arch.endswith("+embedding")
    model = build(arch)
    if checkpoint_first is not None:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpoint_first)
    targets = ["query", "value", "word_embeddings"] if embedding else "all-linear"
    ll.inject(model, ll.LoraConfig(r=4, alpha=8, targets=targets, dropout=0.1, dora=dora))
    with torch.no_grad():
        for _, layer in lora_layers(model):
            gen = torch.Generator().manual_seed(7)
            layer.lora_A["default"].normal_(std=0.3, generator=gen)  # an embedding's A starts at zero
            layer.lora_B["default"].normal_(std=0.1, generator=gen)
    return model.train()


def grads(model: torch.nn.Module, ids: torch.Tensor, bf16: bool = False) -> dict[str, torch.Tensor]:
    torch.manual_seed(5)  # the dropout masks; checkpointing replays the RNG state in its recompute
    labels = torch.zeros(len(ids), dtype=torch.long) if hasattr(model, "bert") else ids
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # use_cache: HF's KV cache changes bf16 rounding
        loss = model(input_ids=ids, labels=labels, **({} if hasattr(model, "bert") else {"use_cache": False})).loss
    loss.backward()
    return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("arch,dora,bf16", [
    ("bert", False, False), ("bert", True, False), ("llama", False, False), ("llama", True, False),
    ("gpt2", False, False), ("gpt2", True, False), ("bert+embedding", False, False),
    ("bert", False, True), ("llama", True, True),
])
def test_checkpointed_gradients_equal_plain_ones(arch, dora, bf16):
    """Bit for bit, with dropout 0.1: the recompute must draw the masks the forward (and the plain run) drew."""
    ids = inputs(batch=3, length=9)
    expected = grads(injected(arch, dora), ids, bf16)
    assert all(g is not None and g.abs().sum() > 0 for g in expected.values())
    for kwargs in ({"use_reentrant": True}, {"use_reentrant": False}):
        after = injected(arch, dora)
        after.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)  # what Trainer does
        before = injected(arch, dora, checkpoint_first=kwargs)
        for model in (after, before):
            assert model.is_gradient_checkpointing
            got = grads(model, ids, bf16)
            assert got.keys() == expected.keys()
            for name, grad in expected.items():
                torch.testing.assert_close(got[name], grad, atol=0, rtol=0, msg=f"{kwargs} {name}")


def test_without_checkpointing_the_embeddings_output_needs_no_grad():
    """The hooks cost nothing otherwise: no gradient is computed into the frozen embeddings."""
    model = injected("bert", dora=False)
    seen = []
    model.get_input_embeddings().register_forward_hook(lambda m, a, out: seen.append(out.requires_grad))
    grads(model, inputs())
    model.gradient_checkpointing_enable()
    grads(model, inputs())
    model.eval()
    model(input_ids=inputs())
    assert seen == [False, True, False]


def test_merge_and_unload_removes_the_hooks():
    model = injected("bert", dora=False)
    plain = ll.merge_and_unload(model)
    assert not plain._forward_pre_hooks and not plain.get_input_embeddings()._forward_hooks
