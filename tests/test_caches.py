"""Values derived from weights (DoRA's row norms, stacked routing factors, SAID's θ) are never stale.

Outside `ll.frozen` nothing is cached, so every way of changing a weight — tracked by torch or not —
shows up in the next output. Inside it each value is computed once, and dropped on leaving.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import loralab as ll
from loralab.adapters import dora

ROUTE = ["lora", "dora", "__base__", "lora"]


def two_adapters() -> nn.Sequential:
    """One Linear with a LoRA and a DoRA adapter, B ≠ 0 and m ≠ ‖W + s·B·A‖ (so every factor matters)."""
    torch.manual_seed(0)
    holder = nn.Sequential(nn.Linear(12, 10))
    ll.inject(holder, ll.LoraConfig(r=3, alpha=6, targets=["0"]), name="lora")
    ll.inject(holder, ll.LoraConfig(r=2, alpha=4, targets=["0"], dora=True), name="dora")
    layer = holder[0]
    with torch.no_grad():
        for name in ("lora", "dora"):
            layer.lora_B[name].normal_()
        layer.lora_magnitude["dora"].mul_(1.5)
    ll.set_trainable(holder, ["lora", "dora"])
    return holder.eval()


def formula(layer, x: torch.Tensor, name: str) -> torch.Tensor:
    """The adapter's output from the layer's current tensors, by the paper's formula (float64)."""
    w, a, b = (t.detach().double() for t in (layer.weight, layer.lora_A[name], layer.lora_B[name]))
    w = w + layer.scaling[name] * b @ a
    if name in layer.lora_magnitude:
        w = layer.lora_magnitude[name].detach().double()[:, None] * w / w.norm(dim=1, keepdim=True)
    return x.double() @ w.T + layer.bias.detach().double()


def assert_fresh(holder: nn.Sequential, x: torch.Tensor) -> None:
    """No-grad outputs of each adapter alone and of a routed batch equal the formula on the current weights."""
    layer = holder[0]
    with torch.no_grad():
        for name in ("lora", "dora"):
            ll.set_active(holder, [name])
            torch.testing.assert_close(holder(x).double(), formula(layer, x, name), atol=1e-4, rtol=1e-4)
        with ll.routing(holder, ROUTE):
            routed = holder(x)
    expected = [formula(layer, x[i:i + 1], n)[0] if n != "__base__" else
                (x[i].double() @ layer.weight.detach().double().T + layer.bias.detach().double())
                for i, n in enumerate(ROUTE)]
    torch.testing.assert_close(routed.double(), torch.stack(expected), atol=1e-4, rtol=1e-4)


def step(holder, optimizer) -> None:
    holder.train()
    ll.set_active(holder, ["lora"])
    holder(torch.randn(4, 12)).square().sum().backward()
    ll.set_active(holder, ["dora"])
    holder(torch.randn(4, 12)).square().sum().backward()
    optimizer.step()
    optimizer.zero_grad()
    holder.eval()


def hand_written_sgd(holder) -> None:
    """An optimizer of one's own, writing through ``.data`` (no version bump)."""
    holder.train()
    ll.set_active(holder, ["dora"])
    holder(torch.randn(4, 12)).square().sum().backward()
    for p in holder.parameters():
        if p.grad is not None:
            p.data.add_(p.grad, alpha=-0.05)
            p.grad = None
    holder.eval()


def vector_twice(holder) -> None:
    """``vector_to_parameters`` from one reused buffer, twice: the parameters alias the buffer."""
    params = [p for p in holder.parameters() if p.requires_grad]
    buffer = torch.nn.utils.parameters_to_vector(params)
    torch.nn.utils.vector_to_parameters(buffer, params)
    assert_fresh(holder, torch.randn(4, 3, 12))
    buffer.mul_(1.3)
    torch.nn.utils.vector_to_parameters(buffer, params)


def data_alias(holder) -> None:
    """``.data = buf``, then a write to ``buf`` (the parameter follows it)."""
    layer = holder[0]
    buf = layer.lora_A["dora"].detach().clone()
    layer.lora_A["dora"].data = buf
    assert_fresh(holder, torch.randn(4, 3, 12))
    buf.mul_(-1.7)


def storage_copy(holder) -> None:
    layer = holder[0]
    new = layer.lora_B["lora"].detach() * 2 + 0.5
    layer.lora_B["lora"].untyped_storage().copy_(new.untyped_storage())


def numpy_write(holder) -> None:
    np.multiply(holder[0].lora_magnitude["dora"].detach().numpy(), 0.5, out=holder[0].lora_magnitude["dora"].detach().numpy())


def load_state(holder) -> None:
    other = two_adapters()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.3)
    holder.load_state_dict(other.state_dict())


def copy_under_no_grad(holder) -> None:
    with torch.no_grad():
        holder[0].weight.copy_(holder[0].weight * 0.9)


def to_double(holder) -> None:
    holder.double()


def merge_round_trip(holder) -> None:
    ll.set_active(holder, ["dora"])
    ll.merge(holder)
    assert_fresh_merged(holder)
    ll.unmerge(holder)


def assert_fresh_merged(holder) -> None:
    x = torch.randn(4, 3, 12)
    with torch.no_grad():
        merged = holder(x)
    ll.unmerge(holder)
    torch.testing.assert_close(merged.double(), formula(holder[0], x, "dora"), atol=1e-4, rtol=1e-4)
    ll.merge(holder)


CHANGES = {
    "adamw_foreach": lambda h: step(h, torch.optim.AdamW([p for p in h.parameters() if p.requires_grad], lr=0.1,
                                                         foreach=True)),
    "adamw_fused": lambda h: step(h, torch.optim.AdamW([p for p in h.parameters() if p.requires_grad], lr=0.1,
                                                       fused=True)),
    "sgd_per_tensor": lambda h: step(h, torch.optim.SGD([p for p in h.parameters() if p.requires_grad], lr=0.1,
                                                        foreach=False)),
    "hand_written_sgd": hand_written_sgd,
    "load_state_dict": load_state,
    "copy_under_no_grad": copy_under_no_grad,
    "vector_to_parameters_reused_buffer": vector_twice,
    "data_assignment_then_buffer_write": data_alias,
    "untyped_storage_copy": storage_copy,
    "numpy_view_write": numpy_write,
    "to_dtype": to_double,
    "merge_unmerge": merge_round_trip,
}


@pytest.mark.parametrize("inside_frozen", [False, True])
@pytest.mark.parametrize("change", sorted(CHANGES))
def test_no_stale_output_after_any_change(change, inside_frozen):
    """Serve, change the weights, serve again: the second outputs follow the change. ``inside_frozen``:
    each serving runs inside its own ``ll.frozen`` block (the change happens between blocks)."""
    holder = two_adapters()
    x = torch.randn(4, 3, 12)
    serve = ll.frozen if inside_frozen else (lambda model: torch.no_grad())
    with serve(holder):
        assert_fresh(holder, x)
    before = {n: p.detach().clone() for n, p in holder.state_dict().items()}
    CHANGES[change](holder)
    after = holder.state_dict()
    assert any(before[n].dtype != after[n].dtype or not torch.equal(before[n], after[n]) for n in before), \
        "the change changed nothing"
    x = x.to(holder[0].weight.dtype)
    with serve(holder):
        assert_fresh(holder, x)


def test_frozen_computes_each_norm_once_and_forgets_on_exit(monkeypatch):
    holder = two_adapters()
    ll.set_active(holder, ["dora"])
    calls = []
    real = dora.adapted_row_norm
    monkeypatch.setattr(dora, "adapted_row_norm", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(4, 3, 12)
    with torch.no_grad():
        holder(x)
        holder(x)
    assert len(calls) == 2  # outside frozen: recomputed every call
    calls.clear()
    with ll.frozen(holder), torch.no_grad():
        first = holder(x)
        for _ in range(3):
            torch.testing.assert_close(holder(x), first, atol=0, rtol=0)
        with ll.frozen(holder):  # nested blocks share the values
            holder(x)
    assert len(calls) == 1
    assert not holder[0].derived.values  # dropped on leaving the outermost block
    with ll.frozen(holder), torch.no_grad():
        holder[0].lora_B["dora"].mul_(2.0)  # a tracked change inside the block is still seen (a guard)
        torch.testing.assert_close(holder(x).double(), formula(holder[0], x, "dora"), atol=1e-4, rtol=1e-4)


def test_dora_inference_on_weights_made_in_inference_mode():
    """Inference tensors have no version counter: nothing is cached for them even inside ``frozen``, and the
    output still equals the formula (loading or merging under inference_mode must not break serving)."""
    torch.manual_seed(0)
    with torch.inference_mode():
        model = torch.nn.Sequential(torch.nn.Linear(8, 6))
        ll.inject(model, ll.LoraConfig(r=2, alpha=4, targets=["0"], dora=True))
        layer = model[0]
        layer.lora_B["default"].normal_()
        x = torch.randn(5, 8)
        with ll.frozen(model):
            out = model.eval()(x)
            assert layer.weight.is_inference() and not layer.derived.values
        w = layer.weight + 2.0 * layer.lora_B["default"] @ layer.lora_A["default"]
        expected = layer.lora_magnitude["default"] / w.norm(dim=1) * (x @ w.T) + layer.bias
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
