"""Several named adapters on one model: switch, stack, disable, delete, route per example."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import loralab as ll
from conftest import build, inputs, logits, train_step

ATOL = 1e-5


@pytest.fixture
def two():
    """A tiny BERT with adapters 'a' (LoRA, own head) and 'b' (DoRA, own head), both trained a step."""
    ids = inputs()
    model = build("bert")
    base = logits(model, ids)
    ll.inject(model, ll.LoraConfig(r=4, targets=["query", "value"], modules_to_save=["classifier"]), name="a")
    train_step(model, ids)
    ll.inject(model, ll.LoraConfig(r=2, targets=["query", "key"], dora=True, modules_to_save=["classifier"]), name="b")
    train_step(model, ids)
    return model, ids, base


def alone(model, name, ids, tmp_path):
    """Outputs of adapter ``name`` saved and loaded alone into a fresh base model."""
    ll.save_adapter(model, tmp_path / name, name=name)
    fresh = build("bert")
    ll.load_adapter(fresh, tmp_path / name, name=name)
    return logits(fresh, ids)


def test_switching_gives_each_adapter_alone(two, tmp_path):
    model, ids, base = two
    out = {}
    for name in ("a", "b"):
        ll.set_active(model, [name])
        out[name] = logits(model, ids)
        torch.testing.assert_close(out[name], alone(model, name, ids, tmp_path), atol=ATOL, rtol=0)
    assert (out["a"] - out["b"]).abs().max() > 1e-3
    ll.set_active(model, [])
    torch.testing.assert_close(logits(model, ids), base, atol=ATOL, rtol=0)


def test_inject_trains_only_the_new_adapter(two):
    model, _, _ = two
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".b" in n or "modules_to_save.b" in n for n in trainable), trainable
    ll.set_trainable(model, ["a"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.endswith(".a") or ".a." in n for n in trainable), trainable


def test_stacked_adapters_add_their_updates():
    """At one layer, stacking gives W·x + b + s_a·B_a·A_a·x + s_b·B_b·A_b·x; merge agrees."""
    torch.manual_seed(0)
    holder = nn.Sequential(nn.Linear(6, 5))
    ll.inject(holder, ll.LoraConfig(r=2, alpha=4, targets=["0"]), name="a")
    ll.inject(holder, ll.LoraConfig(r=3, alpha=3, targets=["0"]), name="b")
    layer = holder[0]
    with torch.no_grad():
        for name in ("a", "b"):
            layer.lora_B[name].normal_()
    ll.set_active(holder, ["a", "b"])
    x = torch.randn(4, 6)
    expected = x @ layer.weight.T + layer.bias + x @ layer.delta_weight("a").T + x @ layer.delta_weight("b").T
    stacked = holder(x)
    torch.testing.assert_close(stacked, expected, atol=1e-5, rtol=0)
    ll.merge(holder)
    torch.testing.assert_close(holder(x), stacked, atol=1e-5, rtol=0)
    ll.unmerge(holder)
    torch.testing.assert_close(holder(x), stacked, atol=1e-5, rtol=0)


def test_stacked_merge_round_trip_on_a_model(two):
    model, ids, _ = two
    ll.inject(model, ll.LoraConfig(r=3, targets=["value", "dense"]), name="c")
    train_step(model, ids)
    ll.set_active(model, ["a", "c"])
    stacked = logits(model, ids)
    ll.merge(model)
    torch.testing.assert_close(logits(model, ids), stacked, atol=ATOL, rtol=0)
    ll.unmerge(model)
    torch.testing.assert_close(logits(model, ids), stacked, atol=ATOL, rtol=0)


def test_routing_runs_one_adapter_per_example(two):
    model, ids, base = two
    expected = {}
    for name in ("a", "b"):
        ll.set_active(model, [name])
        expected[name] = logits(model, ids)
    expected["__base__"] = base
    route = ["b", "__base__", "a"]
    ll.set_active(model, ["a"])  # routing overrides the active set inside the block
    with ll.routing(model, route), torch.no_grad():
        mixed = model(input_ids=ids).logits
    for i, name in enumerate(route):
        torch.testing.assert_close(mixed[i], expected[name][i], atol=ATOL, rtol=0)
    torch.testing.assert_close(logits(model, ids), expected["a"], atol=ATOL, rtol=0)  # restored after


def test_disabled_then_restored(two):
    model, ids, base = two
    ll.set_active(model, ["a", "b"])
    stacked = logits(model, ids)
    with ll.disabled(model):
        torch.testing.assert_close(logits(model, ids), base, atol=ATOL, rtol=0)
    torch.testing.assert_close(logits(model, ids), stacked, atol=0, rtol=0)


def test_delete_restores_plain_modules(two):
    model, ids, base = two
    ll.set_active(model, ["a"])
    only_a = logits(model, ids)
    ll.delete_adapter(model, "b")
    assert ll.active_adapters(model) == ["a"]
    torch.testing.assert_close(logits(model, ids), only_a, atol=0, rtol=0)
    key = model.bert.encoder.layer[0].attention.self.key
    assert type(key) is nn.Linear  # only 'b' adapted key
    ll.delete_adapter(model, "a")
    assert not any(isinstance(m, (ll.LoraLayer, ll.ModulesToSave)) for m in model.modules())
    torch.testing.assert_close(logits(model, ids), base, atol=ATOL, rtol=0)


def test_trainable_parameter_counts():
    model = build("bert")
    total_before = sum(p.numel() for p in model.parameters())
    ll.inject(model, ll.LoraConfig(r=4, targets=["query", "value"]))
    trainable, total = ll.trainable_parameters(model)
    assert trainable == 2 * 2 * (4 * 16 + 16 * 4)  # 2 layers × (query, value) × (A + B)
    assert total == total_before + trainable


def test_routed_inference_matches_each_adapters_formula():
    """No-grad routing stacks the LoRA adapters into one pair of products (`routed_lora_inference`):
    each example must still get W·x + b + s_i·B_i·A_i·x of its own adapter (ranks and scalings differ),
    a DoRA adapter and the base in the same batch keep theirs, and an in-place change to B shows up
    on the next call (the stacked factors are cached)."""
    torch.manual_seed(0)
    holder = nn.Sequential(nn.Linear(12, 10))
    for name, (r, alpha, dora) in {"a": (2, 4, False), "b": (3, 3, False), "c": (4, 16, False),
                                   "d": (2, 2, True)}.items():
        ll.inject(holder, ll.LoraConfig(r=r, alpha=alpha, targets=["0"], dora=dora), name=name)
    layer = holder[0]
    with torch.no_grad():
        for name in "abcd":
            layer.lora_B[name].normal_()
        layer.lora_magnitude["d"].mul_(1.5)
    holder.eval()
    x = torch.randn(6, 5, 12)  # (batch, tokens, in)
    route = ["c", "a", "__base__", "d", "b", "a"]

    def expected():
        rows = []
        for i, name in enumerate(route):
            w = layer.weight
            if name != "__base__":
                w = w + layer.delta_weight(name)
                if name == "d":
                    w = layer.lora_magnitude["d"][:, None] * w / w.norm(dim=1, keepdim=True)
            rows.append(x[i] @ w.T + layer.bias)
        return torch.stack(rows)

    with torch.no_grad():
        with ll.routing(holder, route):
            routed = holder(x)
        torch.testing.assert_close(routed, expected(), atol=1e-5, rtol=0)
        layer.lora_B["b"].mul_(-2.0)  # like an optimizer step between two serving calls
        with ll.routing(holder, route):
            routed = holder(x)
        torch.testing.assert_close(routed, expected(), atol=1e-5, rtol=0)
        with ll.routing(holder, route), torch.autocast("cpu", dtype=torch.bfloat16):
            routed_bf16 = holder(x)
        assert routed_bf16.dtype == torch.bfloat16
        torch.testing.assert_close(routed_bf16.float(), expected(), atol=0.1, rtol=0.02)
    with ll.routing(holder, route):  # with gradients: the per-group path, same numbers
        torch.testing.assert_close(holder(x), expected(), atol=1e-5, rtol=0)
