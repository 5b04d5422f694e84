"""Intrinsic-dimension training: projections (determinism, norms, exact adjoint) and the
subspace model (gradients vs a dense reference, O(D) memory)."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from conftest import build, inputs
from loralab.errors import AdapterError
from loralab.subspace.intrinsic import IntrinsicModel
from loralab.subspace.projections import PROJECTIONS, fwht, hadamard, make_projection

KINDS = sorted(PROJECTIONS)


def test_fwht_is_the_sylvester_hadamard_matrix():
    x = torch.randn(5, 1 << 13, dtype=torch.float64)
    torch.testing.assert_close(fwht(x), x @ hadamard(1 << 13, torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(fwht(fwht(x)), x * (1 << 13), atol=1e-8, rtol=0)  # H·H = n·I


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_for_a_seed(kind):
    u = torch.randn(40)
    a, b, c = (make_projection(kind, 3000, 40, seed)(u) for seed in (7, 7, 8))
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-2


@pytest.mark.parametrize("kind", KINDS)
def test_adjoint_is_exact(kind):
    """⟨P·u, v⟩ = ⟨u, Pᵀ·v⟩ to float64 rounding (rtol 1e-10)."""
    torch.manual_seed(0)
    projection = make_projection(kind, 5000, 37, seed=3).double()
    u, v = torch.randn(37, dtype=torch.float64), torch.randn(5000, dtype=torch.float64)
    left, right = projection(u) @ v, u @ projection.transpose(v)
    assert abs(left - right) <= 1e-10 * abs(left)


@pytest.mark.parametrize("kind", KINDS)
def test_norm_preserved_in_expectation(kind):
    """E_seed ‖P·u‖² / ‖u‖² = 1: the mean over 200 seeds is within 0.05 of 1 (D=2000, d=30)."""
    torch.manual_seed(0)
    u = torch.randn(30)
    ratios = torch.tensor([float(make_projection(kind, 2000, 30, s)(u).square().sum() / u.square().sum())
                           for s in range(200)])
    assert abs(ratios.mean().item() - 1.0) < 0.05, ratios.mean()


def dense_matrix(projection) -> torch.Tensor:
    """The (D, d) matrix of any projection, column by column (test reference only)."""
    return torch.stack([projection(e) for e in torch.eye(projection.dim, dtype=torch.float64)], dim=1)


@pytest.mark.parametrize(("said", "kind"), [(False, "fastfood"), (True, "fastfood"), (True, "sparse"), (True, "dense")])
def test_gradients_match_a_dense_reference(said, kind):
    torch.manual_seed(0)
    model = build("bert").double()
    ids = inputs()
    wrapped = IntrinsicModel(model, dim=64, projection=kind, said=said, seed=5).double()
    with torch.no_grad():
        wrapped.theta_d.normal_(std=0.1)
        if said:
            wrapped.said_lambda.uniform_(0.5, 1.5)
    wrapped(input_ids=ids).logits.square().sum().backward()

    matrix = dense_matrix(wrapped.projection)  # (D, d)
    theta_d = wrapped.theta_d.detach().clone().requires_grad_()
    lam = wrapped.said_lambda.detach().clone().requires_grad_() if said else None
    offset = matrix @ theta_d
    params, start = {}, 0
    for i, (name, p) in enumerate(model.named_parameters()):
        delta = offset[start : start + p.numel()].view(p.shape)
        params[name] = p + (delta * lam[i] if said else delta)
        start += p.numel()
    functional_call(model, params, (), {"input_ids": ids}).logits.square().sum().backward()
    torch.testing.assert_close(wrapped.theta_d.grad, theta_d.grad, atol=1e-9, rtol=1e-7)
    if said:
        torch.testing.assert_close(wrapped.said_lambda.grad, lam.grad, atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("said", [False, True])
def test_assemble_node_under_bf16_autocast(said):
    """`_Assemble` under CPU bf16 autocast (`--precision bf16`): θ is built in float32, the model's matmuls run
    in bf16, and θ_d's and λ's gradients stay float32 and agree with the float32 ones within bf16 precision."""
    torch.manual_seed(0)
    wrapped = IntrinsicModel(build("bert"), dim=64, projection="fastfood", said=said, seed=5)
    with torch.no_grad():
        wrapped.theta_d.normal_(std=0.1)
        if said:
            wrapped.said_lambda.uniform_(0.5, 1.5)
    ids = inputs()
    grads = {}
    for bf16 in (False, True):
        wrapped.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = wrapped(input_ids=ids).logits
        logits.float().square().sum().backward()
        grads[bf16] = [t.grad for t in (wrapped.theta_d, wrapped.said_lambda) if t is not None]
        grads[bf16, "logits"] = logits.detach().float()
    assert all(g.dtype == torch.float32 for g in grads[True])
    torch.testing.assert_close(grads[True, "logits"], grads[False, "logits"], atol=0.02, rtol=0.02)  # seen: 0.006
    for got, want in zip(grads[True], grads[False]):
        assert (got - want).norm() / want.norm() < 0.02  # seen: 0.005


def test_fastfood_stores_nothing_of_size_d_by_D():
    model = build("bert")
    wrapped = IntrinsicModel(model, dim=500, projection="fastfood", said=True)
    own = {n: t for n, t in list(wrapped.named_parameters()) + list(wrapped.named_buffers())
           if not n.startswith("model.")}
    d_sub, full = wrapped.projection.dim, wrapped.full_dim
    assert all(t.numel() < d_sub * full / 10 for t in own.values()), {n: t.shape for n, t in own.items()}
    assert all(t.dim() == 1 or d_sub not in t.shape for t in own.values())
    assert sum(t.numel() for t in own.values()) <= 3 * (full + wrapped.projection.n) + 500


def test_starts_at_the_pretrained_model_and_moves_only_targets():
    model = build("bert")
    ids = inputs()
    with torch.no_grad():
        before = model(input_ids=ids).logits
    wrapped = IntrinsicModel(model, dim=40, said=False, targets=["query", "classifier"])
    assert all(".query." in n or n.startswith("classifier.") for n in wrapped.names)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(input_ids=ids).logits, before, atol=0, rtol=0)
        wrapped.theta_d.fill_(0.5)
        assert (wrapped(input_ids=ids).logits - before).abs().max() > 1e-3


def test_too_small_d_for_said_is_refused():
    with pytest.raises(AdapterError, match=r"d=10 is too small: SAID spends one of the d values on each of the \d+ "
                                           r"moving tensors; use d > \d+, or DID"):
        IntrinsicModel(build("bert"), dim=10, said=True)
