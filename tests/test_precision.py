"""Mixed precision and the no-gradient path: autocast bf16, a bf16 base with float32 adapters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import loralab as ll
from conftest import build, inputs, train_step
from loralab.adapters.dropout import dropped_positions

BF16_ATOL = 0.05  # logits of magnitude ~1; bf16 keeps ~3 significant digits


def trained(arch: str, **kw) -> nn.Module:
    model = build(arch)
    ll.inject(model, ll.LoraConfig(r=4, alpha=8, **kw))
    train_step(model, inputs())
    return model


@pytest.mark.parametrize("dora", [False, True])
@pytest.mark.parametrize("arch,targets", [("bert", ["query", "value"]), ("gpt2", ["c_attn"]), ("llama", "all-linear")])
def test_autocast_bf16_trains_and_keeps_float32_adapters(arch, targets, dora):
    """Under torch.autocast("cpu", bfloat16) — HF Trainer's bf16=True — the fused nodes run in bf16, agree
    with float32 within bf16 precision, and every gradient reaches the float32 adapter weights."""
    model = trained(arch, targets=targets, dora=dora)
    model.train()
    ids = inputs()
    reference = model(input_ids=ids).logits
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(input_ids=ids).logits
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference, atol=BF16_ATOL, rtol=0.05)
    out.float().square().mean().backward()
    adapters = [p for n, p in model.named_parameters() if p.requires_grad]
    assert adapters and all(p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32
                            for p in adapters)
    assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in adapters)


def test_bf16_base_keeps_float32_adapters_unless_asked():
    model = build("llama").to(torch.bfloat16)
    ll.inject(model, ll.LoraConfig(r=4, targets=["q_proj", "v_proj"]))
    layer = model.model.layers[0].self_attn.q_proj
    assert layer.weight.dtype == torch.bfloat16 and layer.lora_A["default"].dtype == torch.float32
    model.train()
    out = model(input_ids=inputs()).logits
    assert out.dtype == torch.bfloat16
    out.float().square().mean().backward()
    assert layer.lora_B["default"].grad.dtype == torch.float32 and layer.lora_B["default"].grad.abs().sum() > 0
    same = build("llama").to(torch.bfloat16)
    ll.inject(same, ll.LoraConfig(r=4, targets=["q_proj"]), autocast_adapter_dtype=False)
    assert same.model.layers[0].self_attn.q_proj.lora_A["default"].dtype == torch.bfloat16


def test_merging_into_a_bf16_base_rounds_once():
    model = build("bert").to(torch.bfloat16)
    ll.inject(model, ll.LoraConfig(r=4, targets=["query"]))
    train_step(model, inputs(), lr=1e-1)
    layer = model.bert.encoder.layer[0].attention.self.query
    exact = layer.weight.float() + layer.delta_weight("default").float()
    report = ll.merge(model)
    assert torch.equal(layer.weight, exact.to(torch.bfloat16))  # W + ΔW in float32, rounded to bf16 once
    assert report == {"merged": ["default"], "layers": 2, "rounded_to": "bfloat16"}


@pytest.mark.parametrize("dora", [False, True])
@pytest.mark.parametrize("batch", [1, 3])  # 7 or 21 tokens against in = 16: DoRA scales the output or folds into W
def test_inference_path_equals_the_training_path(dora, batch):
    model = trained("bert", targets=["query", "value"], dora=dora).eval()
    ids = inputs(batch=batch)
    with torch.enable_grad():
        through_autograd = model(input_ids=ids).logits
    with torch.no_grad():
        plain = model(input_ids=ids).logits
    with torch.inference_mode():
        inference = model(input_ids=ids).logits
    torch.testing.assert_close(plain, through_autograd, atol=1e-5, rtol=0)
    torch.testing.assert_close(inference, plain, atol=0, rtol=0)


@pytest.mark.parametrize("dora", [False, True])
def test_dropout_under_bf16_autocast_matches_the_formula(dora):
    """The dropout path under CPU bf16 autocast draws the same mask as in float32 (`dropped_positions` after
    the same seed), gives the float32 formula's output and gradients within bf16 precision, and leaves the
    float32 input bit-identical with its version counter unchanged."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(48, 40))
    ll.inject(model, ll.LoraConfig(r=4, alpha=8, targets=["0"], dropout=0.2, dora=dora))
    layer = model[0]
    with torch.no_grad():
        layer.lora_B["default"].normal_(std=0.5)
    model.train()
    x = torch.randn(2, 30, 48, requires_grad=True)
    before, version = x.detach().clone(), x._version
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16
    out.float().square().sum().backward()
    assert torch.equal(x.detach(), before) and x._version == version
    adapter = [layer.lora_A["default"], layer.lora_B["default"]] + ([layer.lora_magnitude["default"]] if dora else [])
    ours = [x.grad] + [t.grad for t in adapter]
    assert all(g.dtype == torch.float32 for g in ours)

    torch.manual_seed(1)
    keep = torch.ones(x.numel())
    keep[dropped_positions(x.numel(), 0.2)] = 0.0
    mask = keep.view(x.shape) / 0.8
    ref_x = before.clone().requires_grad_(True)
    a, b = (t.detach().clone().requires_grad_(True) for t in adapter[:2])
    w = layer.weight.detach()
    z = ref_x @ w.T + 2.0 * ((ref_x * mask) @ a.T @ b.T)  # s = alpha / r = 2
    params = [a, b]
    if dora:
        m = adapter[2].detach().clone().requires_grad_(True)
        z = m / (w + 2.0 * b @ a).norm(dim=1).detach() * z
        params.append(m)
    z = z + layer.bias.detach()
    z.square().sum().backward()
    torch.testing.assert_close(out.float(), z.detach(), atol=0.05, rtol=0.02)
    for got, want in zip(ours, [ref_x.grad] + [t.grad for t in params]):
        assert (got - want).norm() / want.norm() < 0.02  # bf16: ~3 significant digits per product


@pytest.mark.parametrize("precision, attention", [("fp32", "sdpa"), ("bf16", "eager")])
def test_trainer_loads_eager_attention_for_bf16(tiny, precision, attention):
    """`--precision bf16` loads the model with eager attention (CPU SDPA's bf16 backward is 3.5× slower
    than fp32's); fp32 keeps transformers' default, SDPA. Both compute the same encoder (fp32, atol 1e-5)."""
    from loralab import models
    from loralab.train.config import TrainConfig
    from loralab.train.loop import Trainer

    cfg = TrainConfig(model=tiny["model"], data=tiny["data"], max_train=24, max_eval=16, max_length=32,
                      precision=precision)
    trainer = Trainer(cfg, progress=False)
    trainer.setup_processes()
    trainer.load_data_and_model()
    assert trainer.model.config._attn_implementation == trainer.attention == attention  # result.json "attention"
    other = {"sdpa": "eager", "eager": "sdpa"}[attention]
    reference, _ = models.load(tiny["model"], "classification", num_labels=2, attn_implementation=other)
    assert reference.config._attn_implementation == other
    ids = torch.randint(5, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # B = 0 after injection: the adapted encoder computes the base encoder
        ours = trainer.model.eval().bert(input_ids=ids).last_hidden_state
        theirs = reference.eval().bert(input_ids=ids).last_hidden_state
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
