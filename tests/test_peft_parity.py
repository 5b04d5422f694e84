"""Parity with the real `peft` package, both ways, on tiny BERT, GPT-2 and Llama models.

Adapters saved by PEFT load into loralab and give PEFT's outputs; adapters saved by
loralab load with `PeftModel.from_pretrained` and give loralab's outputs (atol 1e-5
on logits of magnitude ~1, float32).
"""

from __future__ import annotations

import pytest
import torch

import loralab as ll
from conftest import build, inputs, logits, train_step

peft = pytest.importorskip("peft")
ATOL = 1e-5

# (case id, arch, loralab kwargs). PEFT kwargs are derived from the same values.
CASES = [
    ("bert-lora", "bert", dict(r=4, alpha=8, targets=["query", "value"])),
    ("bert-rslora", "bert", dict(r=4, alpha=8, targets=["query", "value"], rslora=True)),
    ("bert-dora", "bert", dict(r=4, alpha=8, targets=["query", "value", "dense"], dora=True)),
    ("bert-patterns", "bert", dict(r=4, alpha=8, targets=["query", "value"],
                                   rank_pattern={"layer.1.attention.self.query": 2},
                                   alpha_pattern={"layer.0.attention.self.value": 32})),
    ("bert-modules-to-save", "bert", dict(r=4, alpha=8, targets=["query", "value"], modules_to_save=["classifier"])),
    ("bert-embedding", "bert", dict(r=4, alpha=8, targets=["word_embeddings", "query"])),
    ("gpt2-conv1d", "gpt2", dict(r=4, alpha=8, targets=["c_attn", "c_proj"])),
    ("gpt2-conv1d-dora", "gpt2", dict(r=4, alpha=8, targets=["c_attn", "c_fc"], dora=True)),
    ("gpt2-embedding", "gpt2", dict(r=4, alpha=8, targets=["wte", "c_attn"])),
    ("llama-lora", "llama", dict(r=4, alpha=8, targets=["q_proj", "v_proj"])),
    ("llama-all-linear-dora-rslora", "llama", dict(r=4, alpha=8, targets="all-linear", dora=True, rslora=True)),
    ("llama-regex-patterns", "llama", dict(r=4, alpha=16, targets=r".*\.(q_proj|down_proj)",
                                           rank_pattern={"down_proj": 2})),
    ("llama-embedding-mts", "llama", dict(r=4, alpha=8, targets=["embed_tokens", "o_proj"],
                                          modules_to_save=["lm_head"])),
    # W keeps a residual: loading onto the original base replays PiSSA's SVD / OLoRA's QR, in both tools
    ("bert-pissa", "bert", dict(r=4, alpha=8, targets=["query", "value"], init="pissa")),
    ("gpt2-conv1d-pissa-dora", "gpt2", dict(r=4, alpha=8, targets=["c_attn"], init="pissa", dora=True)),
    ("llama-olora", "llama", dict(r=4, alpha=8, targets=["q_proj", "v_proj", "down_proj"], init="olora")),
]


def peft_config(kw: dict) -> "peft.LoraConfig":
    return peft.LoraConfig(
        r=kw["r"], lora_alpha=kw["alpha"], target_modules=kw["targets"], use_rslora=kw.get("rslora", False),
        use_dora=kw.get("dora", False), rank_pattern=kw.get("rank_pattern", {}),
        alpha_pattern=kw.get("alpha_pattern", {}), modules_to_save=kw.get("modules_to_save"),
        init_lora_weights=kw.get("init", False),  # False: random A and B, the adapter is not a no-op
    )


def perturb(params, seed: int) -> None:
    """Move every given parameter by a small deterministic random amount."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(0.1 * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("case,arch,kw", CASES, ids=[c[0] for c in CASES])
def test_peft_saved_adapter_loads_into_loralab(case, arch, kw, tmp_path):
    ids = inputs()
    model = peft.get_peft_model(build(arch), peft_config(kw))
    moved = ("lora_magnitude_vector", "modules_to_save", *(("lora_B",) if "init" in kw else ()))  # PiSSA/OLoRA start at W
    perturb([p for n, p in model.named_parameters() if any(part in n for part in moved)], 1)
    expected = logits(model, ids)
    model.save_pretrained(tmp_path)

    ours = build(arch)
    base = logits(ours, ids)
    ll.load_adapter(ours, tmp_path)
    got = logits(ours, ids)
    assert (expected - base).abs().max() > 1e-3  # the adapter changes the output
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("case,arch,kw", CASES, ids=[c[0] for c in CASES])
def test_loralab_saved_adapter_loads_into_peft(case, arch, kw, tmp_path):
    ids = inputs()
    ours = build(arch)
    base = logits(ours, ids)
    ll.inject(ours, ll.LoraConfig(**kw))
    train_step(ours, ids)  # B ≠ 0, m ≠ ‖W‖
    expected = logits(ours, ids)
    ll.save_adapter(ours, tmp_path)

    model = peft.PeftModel.from_pretrained(build(arch), tmp_path)
    got = logits(model, ids)
    assert (expected - base).abs().max() > 1e-3
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_merged_weights_match_peft_merge(tmp_path):
    """merge_and_unload gives PEFT's merged weights for DoRA on Conv1D (the hardest layout)."""
    ids = inputs()
    kw = dict(r=4, alpha=8, targets=["c_attn"], dora=True)
    ours = build("gpt2")
    ll.inject(ours, ll.LoraConfig(**kw))
    train_step(ours, ids)
    ll.save_adapter(ours, tmp_path)
    theirs = peft.PeftModel.from_pretrained(build("gpt2"), tmp_path).merge_and_unload()
    ll.merge_and_unload(ours)
    for (name, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)


@pytest.mark.parametrize("targets,resize", [(["q_proj", "lm_head"], None), (["embed_tokens", "q_proj"], None),
                                            (["q_proj"], 70)])
def test_peft_adapters_with_saved_embedding_layers(targets, resize, tmp_path):
    """PEFT's save_embedding_layers writes the input/output embeddings' base weights (an embedding or lm_head
    targeted: under ``.base_layer.``; a resized vocabulary: as they are). They load, after a resize if needed."""
    def base():
        model = build("llama")
        if resize:
            model.resize_token_embeddings(resize, mean_resizing=False)
        return model

    torch.manual_seed(0)
    model = peft.get_peft_model(base(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    perturb([p for n, p in model.named_parameters() if "lora_B" in n or "lora_embedding_B" in n], 2)
    layer = model.get_output_embeddings() if "lm_head" in targets else model.get_input_embeddings()
    with torch.no_grad():  # the saved base weight differs from a fresh model's
        getattr(layer, "base_layer", layer).weight[-1] += 1.0
    model.save_pretrained(tmp_path, save_embedding_layers=True)
    expected = logits(model.eval(), inputs())
    if resize:
        with pytest.raises(ll.AdapterError, match=r"embed_tokens.weight has shape \(70, 16\), this model needs "
                                                  r"\(64, 16\). The adapter's vocabulary has 70 rows: resize the "
                                                  r"model first, model.resize_token_embeddings\(70\)"):
            ll.load_adapter(build("llama"), tmp_path)
    ours = base()
    ll.load_adapter(ours, tmp_path)
    torch.testing.assert_close(logits(ours, inputs()), expected, atol=ATOL, rtol=0)
