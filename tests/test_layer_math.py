"""`LoraLayer` against the formulas, one layer at a time (float64, atol 1e-10 unless stated)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

import loralab as ll
from loralab.adapters.dora import adapted_row_norm
from loralab.adapters.dropout import dropped_positions
from loralab.adapters.fused import token_chunks


@pytest.fixture(autouse=True)
def float64_three_threads():
    """Exact comparisons: every tensor in this module is float64, on three threads."""
    old_dtype, old_threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(3)
    yield
    torch.set_default_dtype(old_dtype)
    torch.set_num_threads(old_threads)


def adapted(base: nn.Module, **kw) -> nn.Module:
    holder = nn.Sequential(base)
    ll.inject(holder, ll.LoraConfig(targets=["0"], **kw))
    layer = holder[0]
    with torch.no_grad():
        for name in layer.adapter_names:
            layer.lora_B[name].normal_()
            layer.lora_A[name].normal_()
    return holder


@pytest.mark.parametrize("rslora", [False, True])
def test_linear_matches_formula(rslora):
    torch.manual_seed(0)
    model = adapted(nn.Linear(6, 5), r=3, alpha=7, rslora=rslora)
    layer = model[0]
    a, b = layer.lora_A["default"], layer.lora_B["default"]
    s = 7 / math.sqrt(3) if rslora else 7 / 3
    x = torch.randn(4, 2, 6)
    expected = x @ layer.weight.T + layer.bias + s * (x @ a.T @ b.T)  # (4, 2, 5)
    torch.testing.assert_close(model(x), expected, atol=1e-10, rtol=0)
    torch.testing.assert_close(layer.delta_weight("default"), s * b @ a, atol=1e-12, rtol=0)


def test_conv1d_matches_linear_with_transposed_weight():
    torch.manual_seed(0)
    conv = Conv1D(5, 6)  # nf=out=5, nx=in=6; weight (6, 5)
    model = adapted(conv, r=2, alpha=4)
    layer = model[0]
    x = torch.randn(3, 6)
    w = layer.weight.T  # (5, 6)
    expected = x @ w.T + layer.bias + 2.0 * (x @ layer.lora_A["default"].T @ layer.lora_B["default"].T)
    torch.testing.assert_close(model(x), expected, atol=1e-10, rtol=0)


def test_embedding_matches_formula():
    torch.manual_seed(0)
    model = adapted(nn.Embedding(11, 4, padding_idx=0), r=3, alpha=6)
    layer = model[0]
    ids = torch.tensor([[0, 3, 10], [5, 5, 1]])
    delta = (layer.lora_B["default"] @ layer.lora_A["default"]).T * 2.0  # (vocab, dim)
    torch.testing.assert_close(model(ids), (layer.weight + delta)[ids], atol=1e-10, rtol=0)


def test_dora_forward_and_gradients_match_reference():
    """DoRA: h = m/‖W + sBA‖ ⊙ (W + sBA)x + b, the norm detached (§4.3), gradients included."""
    torch.manual_seed(0)
    model = adapted(nn.Linear(6, 5), r=2, alpha=4, dora=True)
    layer = model[0]
    with torch.no_grad():
        layer.lora_magnitude["default"].mul_(torch.rand(5) + 0.5)
    a, b, m = layer.lora_A["default"], layer.lora_B["default"], layer.lora_magnitude["default"]
    x = torch.randn(3, 6)

    ref = [t.detach().clone().requires_grad_() for t in (a, b, m)]
    w_adapted = layer.weight + 2.0 * ref[1] @ ref[0]
    norm = w_adapted.norm(dim=1).detach()
    expected = (x @ w_adapted.T) * (ref[2] / norm) + layer.bias
    out = model(x)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=0)
    out.square().sum().backward()
    expected.square().sum().backward()
    for ours, theirs in zip((a, b, m), ref, strict=True):
        torch.testing.assert_close(ours.grad, theirs.grad, atol=1e-9, rtol=0)


def assert_same_values_and_gradients(out, expected, ours, theirs) -> None:
    """out = expected (atol 1e-10), and a random linear loss gives every input the same gradient (atol 1e-9)."""
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=0)
    weights = torch.randn(out.shape)
    (out * weights).sum().backward()
    (expected * weights).sum().backward()
    for mine, reference in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine.grad, reference.grad, atol=1e-9, rtol=0)


def adapted_layer_with_references(kind: str, **kw):
    """A layer of ``kind`` with a random adapter (B ≠ 0, DoRA's m scaled, bias × 10), its weight and
    bias trainable; returns (model, our parameters + x, reference copies + x, the copies by name)."""
    torch.manual_seed(0)
    base = Conv1D(5, 6) if kind == "conv1d" else nn.Linear(6, 5, bias=kind == "linear")
    model = adapted(base, r=2, alpha=4, **kw)
    layer = model[0]
    params = {"A": layer.lora_A["default"], "B": layer.lora_B["default"], "W": layer.weight}
    with torch.no_grad():
        layer.lora_B["default"].normal_()
        if "default" in layer.lora_magnitude:
            params["m"] = layer.lora_magnitude["default"]
            params["m"].mul_(torch.rand(5) + 0.5)
        if layer.bias is not None:
            layer.bias.mul_(10.0)
            params["b"] = layer.bias
    for p in params.values():
        p.requires_grad_(True)
    x = torch.randn(2, 3, 6, requires_grad=True)
    ref = {k: t.detach().clone().requires_grad_() for k, t in params.items()}
    ref["x"] = x.detach().clone().requires_grad_()
    ref["W_out_in"] = ref["W"].T if kind == "conv1d" else ref["W"]
    ours = [*params.values(), x]
    return model, ours, [ref[k] for k in params] + [ref["x"]], ref


@pytest.mark.parametrize("kind", ["linear", "linear-no-bias", "conv1d"])
def test_dora_node_gradients_for_every_input(kind):
    """`DoraLinearFunction` saves its output, not W·x + s·B·A·x; every gradient must still equal the formula's:
    3-D input, a trainable weight and bias, and a zero magnitude row (recomputed exactly)."""
    model, ours, theirs, ref = adapted_layer_with_references(kind, dora=True)
    with torch.no_grad():
        model[0].lora_magnitude["default"][3] = 0.0
        ref["m"][3] = 0.0
    w_adapted = ref["W_out_in"] + 2.0 * ref["B"] @ ref["A"]
    expected = (ref["x"] @ w_adapted.T) * (ref["m"] / w_adapted.norm(dim=1).detach()) + ref.get("b", 0.0)
    assert_same_values_and_gradients(model(ours[-1]), expected, ours, theirs)


@pytest.mark.parametrize("kind", ["linear", "linear-no-bias", "conv1d"])
@pytest.mark.parametrize("zero_row", [False, True])
def test_dora_with_dropout_matches_formula(kind, zero_row):
    """DoRA with dropout on the LoRA input path (`DoraLinearFunction`), n detached:
    h = m/n ⊙ (W·x + s·B·A·x̃) + b, x̃ = dropout(x); every gradient, a zero-magnitude row too."""
    model, ours, theirs, ref = adapted_layer_with_references(kind, dora=True, dropout=0.5)
    if zero_row:
        with torch.no_grad():
            model[0].lora_magnitude["default"][3] = 0.0
            ref["m"][3] = 0.0
    model.train()
    torch.manual_seed(1)
    out = model(ours[-1])
    dropped = dropout_like(ref["x"], 0.5, 1)
    w = ref["W_out_in"]
    scale = ref["m"] / (w + 2.0 * ref["B"] @ ref["A"]).norm(dim=1).detach()
    expected = scale * (ref["x"] @ w.T + 2.0 * (dropped @ ref["A"].T @ ref["B"].T)) + ref.get("b", 0.0)
    with torch.no_grad():
        assert (dropped == 0).any() and (out - model.eval()(ours[-1])).abs().max() > 1e-3  # dropout really acted
    assert_same_values_and_gradients(out, expected, ours, theirs)


def test_row_norm_without_full_matrix():
    torch.manual_seed(0)
    w, a, b = torch.randn(7, 9), torch.randn(3, 9), torch.randn(7, 3)
    torch.testing.assert_close(adapted_row_norm(w, a, b, 0.7), (w + 0.7 * b @ a).norm(dim=1), atol=1e-10, rtol=0)


def dropout_like(x: torch.Tensor, p: float, seed) -> torch.Tensor:
    """dropout_p(x) with the mask the layers draw after torch.manual_seed(seed) (`dropped_positions`);
    seed None: the next mask from the RNG as it stands."""
    if seed is not None:
        torch.manual_seed(seed)
    keep = torch.ones(x.numel(), dtype=x.dtype)
    keep[dropped_positions(x.numel(), p)] = 0.0
    return x * keep.view(x.shape) / (1.0 - p)


def test_dropped_positions_are_iid_bernoulli():
    """Geometric gaps give each entry probability p of being dropped, independently (χ²-free checks)."""
    torch.manual_seed(0)
    n, p = 200_000, 0.05
    drops = torch.zeros(n)
    for _ in range(20):
        drops[dropped_positions(n, p)] += 1
    assert abs(drops.mean().item() / 20 - p) < 0.002  # rate
    per_entry = drops.view(-1, 1000).mean(1) / 20  # no position is favoured
    assert per_entry.std().item() < 0.01
    torch.manual_seed(1)
    once = torch.zeros(n, dtype=torch.bool)
    once[dropped_positions(n, p)] = True
    both = (once[:-1] & once[1:]).double().mean().item()  # neighbours drop together at rate p²
    assert abs(both - p * p) < 0.0015 and dropped_positions(10, 0.0).numel() == 0


def test_dropout_only_on_lora_path():
    torch.manual_seed(0)
    model = adapted(nn.Linear(6, 5), r=2, alpha=4, dropout=0.5).train()
    layer = model[0]
    x = torch.randn(200, 6)
    with ll.disabled(model):
        torch.testing.assert_close(model(x), x @ layer.weight.T + layer.bias, atol=1e-10, rtol=0)
    torch.manual_seed(1)
    out = model(x)
    mask = dropout_like(torch.ones_like(x), 0.5, 1)
    expected = x @ layer.weight.T + layer.bias + 2.0 * ((x * mask) @ layer.lora_A["default"].T @ layer.lora_B["default"].T)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=0)


def residual_init_layer(init: str):
    """(layer, W0): a seeded Linear(8, 6) adapted with r = 2, s = 2 and ``init``."""
    torch.manual_seed(0)
    holder = nn.Sequential(nn.Linear(8, 6))
    w0 = holder[0].weight.detach().clone()
    ll.inject(holder, ll.LoraConfig(r=2, alpha=4, targets=["0"], init=init))
    return holder[0], w0


def test_pissa_moves_top_singular_directions():
    layer, w0 = residual_init_layer("pissa")
    torch.testing.assert_close(layer.weight + layer.delta_weight("default"), w0, atol=1e-10, rtol=0)
    sv = torch.linalg.svdvals(w0)
    torch.testing.assert_close(torch.linalg.svdvals(layer.delta_weight("default"))[:2], sv[:2], atol=1e-10, rtol=0)
    torch.testing.assert_close(torch.linalg.svdvals(layer.weight)[:4], sv[2:], atol=1e-10, rtol=0)


def test_olora_takes_the_first_qr_columns():
    """OLoRA: W = Q·R, B = Q[:, :r], A = R[:r], W ← W − s·B·A (atol 1e-6 on float32)."""
    layer, w0 = residual_init_layer("olora")
    q, upper = torch.linalg.qr(w0)
    torch.testing.assert_close(layer.lora_B["default"], q[:, :2], atol=1e-6, rtol=0)
    torch.testing.assert_close(layer.lora_A["default"], upper[:2], atol=1e-6, rtol=0)
    torch.testing.assert_close(layer.weight, w0 - 2.0 * q[:, :2] @ upper[:2], atol=1e-6, rtol=0)
    x = torch.randn(3, 8)
    torch.testing.assert_close(layer(x), x @ w0.T + layer.bias, atol=1e-5, rtol=0)  # outputs unchanged at init


def test_rank_and_alpha_patterns_per_module():
    cfg = ll.LoraConfig(r=8, alpha=16, rank_pattern={r"layer\.1\..*query": 2}, alpha_pattern={"value": 4})
    assert cfg.rank_for("enc.layer.1.attention.query") == 2
    assert cfg.rank_for("enc.layer.0.attention.query") == 8
    assert cfg.scaling_for("enc.layer.1.attention.value") == 4 / 8
    assert cfg.scaling_for("enc.layer.1.attention.query") == 16 / 2
    assert cfg.rank_for("enc.layer.1.attention.myvalue") == 8  # patterns match at a name boundary
    assert cfg.alpha_for("enc.layer.1.attention.myvalue") == 16


@pytest.mark.parametrize("kind", ["linear", "linear-no-bias", "conv1d"])
@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_lora_node_gradients_for_every_input(kind, dropout):
    """`LoraLinearFunction` writes its own backward; every gradient must equal the formula's (3-D input,
    trainable weight and bias, with and without dropout on the LoRA path)."""
    model, ours, theirs, ref = adapted_layer_with_references(kind, dropout=dropout)
    model.train()
    torch.manual_seed(1)
    out = model(ours[-1])
    dropped = dropout_like(ref["x"], dropout, 1) if dropout else ref["x"]
    expected = ref["x"] @ ref["W_out_in"].T + ref.get("b", 0.0) + 2.0 * (dropped @ ref["A"].T @ ref["B"].T)
    assert_same_values_and_gradients(out, expected, ours, theirs)


@pytest.mark.parametrize("threads", [1, 3])
def test_rank_r_products_run_on_equal_token_slices(threads):
    """k = the largest divisor of T up to 8, whatever the thread count (so the bits do not depend on it)."""
    torch.set_num_threads(threads)
    assert [token_chunks(t) for t in (2048, 6, 7, 1, 22)] == [8, 6, 7, 1, 2]


class ThreeHeads(nn.Module):
    """q, k and v reading one input, as in attention: their LoRA nodes all save the same x."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(12, 5), nn.Linear(12, 5), nn.Linear(12, 5)

    def forward(self, x):
        return self.q(x) * self.k(x).sigmoid() + self.v(x)


@pytest.mark.parametrize("dora", [False, True])
def test_dropout_on_a_shared_input_leaves_it_untouched(dora):
    """Dropout works on a zeroed copy of x (`SparseDropout.kept`): after forward and backward x is
    bit-identical, its version counter unchanged (the other nodes that saved it still run), and every
    gradient equals the formula's with each layer's own mask."""
    torch.manual_seed(0)
    model = ThreeHeads()
    ll.inject(model, ll.LoraConfig(r=3, alpha=6, targets=["q", "k", "v"], dropout=0.3, dora=dora))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    model.train()
    x = torch.randn(40, 12, requires_grad=True)
    before, version = x.detach().clone(), x._version
    torch.manual_seed(1)
    model(x).square().sum().backward()
    assert torch.equal(x.detach(), before) and x._version == version
    ours = [x.grad] + [p.grad for p in model.parameters() if p.requires_grad]

    torch.manual_seed(1)  # the same masks, drawn in the same order (q, k, v)
    masks = [dropout_like(torch.ones(40, 12), 0.3, None) for _ in range(3)]
    ref_x = before.clone().requires_grad_(True)
    outs, ref_params = [], []
    for layer, mask in zip((model.q, model.k, model.v), masks):
        a, b = (t.detach().clone().requires_grad_(True) for t in (layer.lora_A["default"], layer.lora_B["default"]))
        w = layer.weight.detach()
        z = ref_x @ w.T + 2.0 * ((ref_x * mask) @ a.T @ b.T)
        params = [a, b]
        if dora:
            m = layer.lora_magnitude["default"].detach().clone().requires_grad_(True)
            z = m / (w + 2.0 * b @ a).norm(dim=1).detach() * z
            params.append(m)
        outs.append(z + layer.bias.detach())
        ref_params.append(params)
    (outs[0] * outs[1].sigmoid() + outs[2]).square().sum().backward()
    theirs = [ref_x.grad] + [p.grad for params in ref_params for p in params]
    for got, want in zip(ours, theirs):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
