"""The chunked causal-LM loss equals Hugging Face's definition on the same batch (fp64: 1e-10), with the same gradients,
and never holds the (tokens, vocabulary) logits."""

from __future__ import annotations

import pytest
import torch

import loralab as ll
from conftest import build
from loralab.tasks.lm_loss import ChunkedLinearCrossEntropy, causal_lm_loss
from loralab.tasks.objective import Objective


def batch(vocab: int = 64, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (3, 9), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # right padding
    labels = ids.clone()
    labels[:, :3] = -100  # the prompt
    labels[1, 6:] = -100
    return ids, mask, labels


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("chunk", [1, 5, 1000])
def test_loss_and_gradients_equal_hugging_face(arch, chunk):
    torch.set_default_dtype(torch.float64)
    try:
        model = build(arch).double()
        ll.inject(model, ll.LoraConfig(r=2, targets="all-linear"))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_()
        model.requires_grad_(True)  # every weight, the output layer (GPT-2: tied to the input embedding) too
        ids, mask, labels = batch()
        out = model(input_ids=ids, attention_mask=mask, labels=labels)  # HF's loss is float32 whatever the model
        theirs = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, out.logits.shape[-1]),
                                                   labels[:, 1:].reshape(-1), ignore_index=-100)  # the same, in fp64
        torch.testing.assert_close(theirs.float(), out.loss, atol=1e-6, rtol=0)
        theirs.backward()
        expected = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad()
        hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        head = model.get_output_embeddings()
        ours, count = causal_lm_loss(hidden, head.weight, head.bias, labels, chunk=chunk)
        assert count == int((labels[:, 1:] != -100).sum())
        torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=0)
        ours.backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(p.grad, expected[name], atol=1e-9, rtol=1e-7, msg=name)
    finally:
        torch.set_default_dtype(torch.float32)


def test_objective_uses_the_chunked_loss_for_a_causal_lm(monkeypatch):
    model = build("llama")
    objective = Objective(model, "causal_lm")
    assert objective.chunked
    ids, mask, labels = batch()
    calls = []
    real = ChunkedLinearCrossEntropy.apply
    monkeypatch.setattr(ChunkedLinearCrossEntropy, "apply", lambda *a: calls.append(a[0].shape) or real(*a))
    out = objective(ids, mask, labels)
    assert calls == [(int((labels[:, 1:] != -100).sum()), 16)]  # only the labelled positions, hidden size 16
    torch.testing.assert_close(out.loss, model(input_ids=ids, attention_mask=mask, labels=labels).loss,
                               atol=1e-5, rtol=0)


def test_bf16_autocast_stays_close_and_float32():
    model = build("llama")
    ids, mask, labels = batch()
    reference = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = Objective(model, "causal_lm")(ids, mask, labels)
    assert out.loss.dtype == torch.float32
    torch.testing.assert_close(out.loss, reference, atol=0.05, rtol=0.02)


@pytest.mark.parametrize("padding", ["right", "left"])
def test_the_lean_path_gives_the_same_loss_and_gradients(padding):
    """`tasks.lean`: the gated MLP keeping two tensors instead of three, and a right-padded causal batch run without
    its padding mask (a left-padded one keeps it): loss and every trainable gradient equal the plain model's."""
    torch.set_default_dtype(torch.float64)
    try:
        ids, mask, labels = batch()
        if padding == "left":
            ids, mask, labels = ids.flip(1), mask.flip(1), labels.flip(1)
        results = []
        for lean in (False, True):
            model = build("llama").double()
            ll.inject(model, ll.LoraConfig(r=2, targets="all-linear"))
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if "lora_B" in name:
                        p.normal_()
            if lean:
                loss = Objective(model, "causal_lm", lean=True)(ids, mask, labels).loss
            else:  # the model as Hugging Face runs it: the padding mask, every logit, the loss's definition in fp64
                logits = model(input_ids=ids, attention_mask=mask).logits
                loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                         labels[:, 1:].reshape(-1), ignore_index=-100)
            loss.backward()
            results.append((loss, {n: p.grad for n, p in model.named_parameters() if p.requires_grad}))
        (plain, plain_grads), (lean_loss, lean_grads) = results
        torch.testing.assert_close(lean_loss, plain, atol=1e-10, rtol=0)
        for name in plain_grads:
            torch.testing.assert_close(lean_grads[name], plain_grads[name], atol=1e-10, rtol=1e-8, msg=name)
    finally:
        torch.set_default_dtype(torch.float32)
