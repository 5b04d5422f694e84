"""Composition is exact by construction: cat = the stacked adapters, svd error = discarded energy, PEFT agrees."""

from __future__ import annotations

import json

import pytest
import torch

import loralab as ll
from conftest import build, inputs, logits, train_step
from loralab.analysis import similarity
from loralab.analysis.factors import delta_weight, factors
from loralab.commands import compose as compose_io
from loralab.compose import combine, geometry, task_arithmetic
from loralab.errors import AdapterError
from test_analysis import LargestTensor

ATOL = 1e-5  # logits of magnitude ~1, float32

CASES = {  # two adapters with different ranks, alphas, rsLoRA and targets, on each layer type
    "bert-linear-embedding": ("bert", dict(r=4, alpha=8, targets=["query", "word_embeddings"]),
                              dict(r=2, alpha=3, rslora=True, targets=["query", "value"])),
    "gpt2-conv1d-embedding": ("gpt2", dict(r=4, alpha=8, targets=["c_attn", "wte"]),
                              dict(r=3, alpha=2, rslora=True, targets=["c_attn", "c_fc"])),
    "llama-linear": ("llama", dict(r=2, alpha=16, targets=["q_proj", "down_proj"]),
                     dict(r=5, alpha=5, targets=["q_proj", "v_proj"])),
}


@pytest.fixture(params=sorted(CASES))
def two_adapters(request, tmp_path):
    """A model holding trained adapters 'a' and 'b' (B ≠ 0), both saved to disk."""
    arch, kw_a, kw_b = CASES[request.param]
    model = build(arch)
    for name, kw in (("a", kw_a), ("b", kw_b)):
        ll.inject(model, ll.LoraConfig(**kw), name=name)
        train_step(model, inputs())
        ll.save_adapter(model, tmp_path / name, name=name)
    return arch, model, tmp_path


def test_cat_equals_the_stacked_adapters(two_adapters):
    arch, model, root = two_adapters
    ll.set_active(model, ["a", "b"])
    stacked = logits(model, inputs())
    compose_io.compose([root / "a", root / "b"], [1.0, 1.0], root / "cat", method="cat")
    fresh = build(arch)
    ll.load_adapter(fresh, root / "cat")
    assert (stacked - logits(build(arch), inputs())).abs().max() > 1e-3
    torch.testing.assert_close(logits(fresh, inputs()), stacked, atol=ATOL, rtol=0)
    task = json.loads((root / "cat" / "adapter_config.json").read_text())["task_type"]
    assert task == json.loads((root / "a" / "adapter_config.json").read_text())["task_type"]
    assert task == {"bert": None, "gpt2": "CAUSAL_LM", "llama": "CAUSAL_LM"}[arch]  # the sources' task type


def test_cat_with_any_weights_is_the_weighted_sum_of_updates(two_adapters):
    _, _, root = two_adapters
    fa, fb = factors(root / "a"), factors(root / "b")
    result = combine.cat([fa, fb], [0.7, -1.3])
    assert set(result) == set(fa) | set(fb)
    for path, f in result.items():
        expected = sum(w * delta_weight(src[path]) for src, w in ((fa, 0.7), (fb, -1.3)) if path in src)
        torch.testing.assert_close(delta_weight(f), expected, atol=1e-10, rtol=0)
        assert f.rank == sum(src[path].rank for src in (fa, fb) if path in src)


def test_an_adapter_minus_itself_is_exactly_zero(two_adapters):
    _, _, root = two_adapters
    fa = factors(root / "a")
    for method in (combine.cat, lambda ads, ws: combine.svd(ads, ws, rank=2)[0]):
        for f in method([fa, fa], [1.0, -1.0]).values():
            assert torch.count_nonzero(delta_weight(f)) == 0


def test_svd_error_is_the_discarded_energy(two_adapters):
    _, _, root = two_adapters
    fa, fb = factors(root / "a"), factors(root / "b")
    exact = combine.cat([fa, fb], [1.0, 0.5])
    result, errors = combine.svd([fa, fb], [1.0, 0.5], rank=2)
    for path, f in result.items():
        dense = delta_weight(exact[path])
        s = torch.linalg.svdvals(dense)
        k = min(2, f.rank)
        discarded = float(s[k:].square().sum().sqrt() / s.square().sum().sqrt())
        assert errors[path] == pytest.approx(discarded, abs=1e-9)
        actual = float((dense - delta_weight(f)).norm() / dense.norm())  # Eckart–Young: the same number
        assert actual == pytest.approx(discarded, abs=1e-9)


def test_svd_by_energy_keeps_that_fraction():
    gen = torch.Generator().manual_seed(0)
    f = ll_factors(gen, out=50, n_in=40, r=10)
    result, errors = combine.svd([{"x": f}], [1.0], energy=0.9)
    assert errors["x"] ** 2 <= 0.1 + 1e-12 and result["x"].rank < 10


def ll_factors(gen, out, n_in, r):
    from loralab.analysis.factors import Factors

    return Factors(torch.randn(r, n_in, generator=gen, dtype=torch.float64),
                   torch.randn(out, r, generator=gen, dtype=torch.float64), 0.5)


def test_svd_path_never_builds_an_out_by_in_tensor():
    gen = torch.Generator().manual_seed(1)
    adapters = [{"layer": ll_factors(gen, 3000, 2000, 8)} for _ in range(3)]
    with LargestTensor() as mode:
        combine.svd(adapters, [1.0, 1.0, 1.0], rank=8)
    assert mode.largest <= 3000 * 24, mode.largest  # the stacked B, (out, Σr)


def test_ties_on_a_hand_computed_example():
    """Trim to the top 3 of 6 by magnitude, elect the sign of the sum, average the agreeing entries."""
    t1 = torch.tensor([[3.0, -1.0, 0.5], [-2.0, 4.0, 1.0]])
    t2 = torch.tensor([[-1.0, 2.0, -0.5], [1.0, -3.0, 2.0]])
    # trimmed: t1 → [[3, 0, 0], [-2, 4, 0]], t2 → [[0, 2, 0], [0, -3, 2]]; elected: [[+, +, +], [-, +, +]]
    expected = torch.tensor([[3.0, 2.0, 0.0], [-2.0, 4.0, 2.0]], dtype=torch.float64)
    torch.testing.assert_close(task_arithmetic.ties_merge([t1, t2], [1.0, 1.0], density=0.5), expected)
    # weights scale after the trim: 0.5·t1 and 2·t2 elect [[+, +, +], [-, -, +]] (2 − 6 < 0 in (1, 1))
    expected = torch.tensor([[1.5, 4.0, 0.0], [-1.0, -6.0, 4.0]], dtype=torch.float64)
    torch.testing.assert_close(task_arithmetic.ties_merge([t1, t2], [0.5, 2.0], density=0.5), expected)


def test_dare_on_a_hand_computed_example():
    """p = 0.5: survivors doubled, the rest 0; the mask comes from the seeded generator."""
    tau = torch.tensor([[2.0, 4.0], [6.0, 8.0]])
    keep = torch.rand((2, 2), generator=torch.Generator().manual_seed(7), dtype=torch.float64) >= 0.5
    got = task_arithmetic.dare_merge([tau], [1.0], 0.5, torch.Generator().manual_seed(7))
    torch.testing.assert_close(got, tau.double() * keep * 2.0)
    assert task_arithmetic.dare_merge([tau, tau], [1.0, -0.5], 0.0, torch.Generator()).tolist() == [[1, 2], [3, 4]]
    mean = torch.stack([task_arithmetic.dare_merge([tau], [1.0], 0.5, torch.Generator().manual_seed(s))
                        for s in range(2000)]).mean(0)
    torch.testing.assert_close(mean, tau.double(), atol=0.5, rtol=0)  # unbiased


def test_ties_and_dare_refactor_and_report_the_error(two_adapters):
    _, _, root = two_adapters
    fa, fb = factors(root / "a"), factors(root / "b")
    for result, errors in (task_arithmetic.ties([fa, fb], [1.0, 1.0], density=0.3, rank=3),
                           task_arithmetic.dare([fa, fb], [1.0, 1.0], drop=0.3, seed=1, rank=3)):
        assert all(f.rank <= 3 for f in result.values()) and all(0 <= e < 1 for e in errors.values())


def test_peft_loads_the_combined_adapter_with_the_same_outputs(two_adapters):
    peft = pytest.importorskip("peft")
    arch, _, root = two_adapters
    report = compose_io.compose([root / "a", root / "b"], [1.0, -0.5], root / "svd", method="svd", rank=3)
    ours = build(arch)
    ll.load_adapter(ours, root / "svd")
    theirs = peft.PeftModel.from_pretrained(build(arch), root / "svd")
    torch.testing.assert_close(logits(theirs, inputs()), logits(ours, inputs()), atol=ATOL, rtol=0)
    assert json.loads((root / "svd" / "compose.json").read_text())["max_relative_error"] == report["max_relative_error"]
    ll.merge(ours)  # a normal adapter: it merges too
    torch.testing.assert_close(logits(ours, inputs()), logits(theirs, inputs()), atol=ATOL, rtol=0)


def test_heads_are_never_combined_silently(tmp_path):
    model = build("bert")
    for name in ("a", "b"):
        ll.inject(model, ll.LoraConfig(r=2, targets=["query"], modules_to_save=["classifier"]), name=name)
        train_step(model, inputs())
        ll.save_adapter(model, tmp_path / name, name=name)
    sources = [tmp_path / "a", tmp_path / "b"]
    with pytest.raises(AdapterError, match=r"the adapters carry modules_to_save modules \['classifier'\] \(e.g. task "
                                           r"heads\); say what the result keeps with head= \(CLI: --head\): 'sum'"):
        compose_io.compose(sources, [1.0, 1.0], tmp_path / "x", method="cat")
    assert not (tmp_path / "x").exists()
    compose_io.compose(sources, [1.0, 1.0], tmp_path / "keep", method="cat", head="keep:1")
    kept = build("bert")
    ll.load_adapter(kept, tmp_path / "keep")
    head_b = model.classifier.modules_to_save["b"].weight
    torch.testing.assert_close(kept.classifier.modules_to_save["default"].weight, head_b)
    compose_io.compose(sources, [0.5, 2.0], tmp_path / "sum", method="cat", head="sum")
    summed = build("bert")
    ll.load_adapter(summed, tmp_path / "sum")
    expected = 0.5 * model.classifier.modules_to_save["a"].weight + 2.0 * head_b
    torch.testing.assert_close(summed.classifier.modules_to_save["default"].weight, expected, atol=1e-6, rtol=0)


def saved_with_base(arch: str, targets: list[str], path, base_name: str) -> None:
    """An untrained adapter of ``arch`` saved to ``path``, its base model recorded as ``base_name``."""
    model = build(arch)
    ll.inject(model, ll.LoraConfig(r=2, targets=targets))
    ll.save_adapter(model, path)
    meta = json.loads((path / "adapter_config.json").read_text())
    meta["base_model_name_or_path"] = base_name
    (path / "adapter_config.json").write_text(json.dumps(meta))


def test_refusals(tmp_path):
    model = build("bert")
    ll.inject(model, ll.LoraConfig(r=2, targets=["query"], dora=True), name="d")
    ll.save_adapter(model, tmp_path / "dora", name="d")
    with pytest.raises(AdapterError, match=r"adapter 0 is DoRA .* Merge each into the base model instead"):
        compose_io.compose([tmp_path / "dora"], [1.0], tmp_path / "x")
    saved_with_base("llama", ["q_proj"], tmp_path / "llama", "some/other-model")
    saved_with_base("bert", ["query"], tmp_path / "bert", "bert-tiny")
    with pytest.raises(AdapterError, match=r"trained on different base models \(\['bert-tiny', 'some/other-model'\]\)"):
        compose_io.compose([tmp_path / "bert", tmp_path / "llama"], [1.0, 1.0], tmp_path / "x")
    with pytest.raises(AdapterError, match=r"2 adapters but 1 weights; give one weight per adapter"):
        combine.cat([factors(tmp_path / "bert")] * 2, [1.0])
    with pytest.raises(AdapterError, match=r"weights must be finite numbers, got \[inf\]"):
        compose_io.compose([tmp_path / "bert"], [float("inf")], tmp_path / "x")
    from loralab.analysis.factors import Factors

    with pytest.raises(AdapterError, match=r"the combination of x is not finite \(nan/inf\)"):
        combine.check_finite({"x": Factors(torch.ones(1, 2), torch.full((2, 1), float("inf")), 1.0)})
    assert not (tmp_path / "x").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(Exception, match=r"--out .*full is not empty; give a new directory \(nothing was written\)"):
        compose_io.compose([tmp_path / "bert"], [1.0], tmp_path / "full")


def test_geometry_of_identical_opposite_and_random_adapters(tmp_path):
    gen = torch.Generator().manual_seed(3)
    f = ll_factors(gen, 60, 40, 4)
    same = geometry.pair_geometry(f, f)
    assert same["cosine"] == pytest.approx(1.0, abs=1e-12) and same["sign_conflict"] == 0.0
    from loralab.analysis.factors import Factors

    flipped = geometry.pair_geometry(f, Factors(f.A, -f.B, f.scale))
    assert flipped["cosine"] == pytest.approx(-1.0, abs=1e-12) and flipped["sign_conflict"] == 1.0
    assert flipped["max_principal_cosine"] == pytest.approx(1.0, abs=1e-9)
    result = geometry.adapters_geometry({"x": f}, {"x": f})
    assert abs(result["summary"]["random_cosine"]) < 0.3 < result["summary"]["pair_cosine"]


def test_output_angles_and_the_distance_between_the_as():
    from loralab.analysis.factors import Factors

    gen = torch.Generator().manual_seed(4)
    f = ll_factors(gen, 60, 40, 4)
    basis = torch.linalg.qr(torch.randn(60, 8, generator=gen, dtype=torch.float64))[0]
    own, other = Factors(f.A, basis[:, :4], 1.0), Factors(f.A, basis[:, 4:], 1.0)  # orthogonal column spaces
    assert geometry.pair_geometry(own, other)["max_output_principal_cosine"] == pytest.approx(0.0, abs=1e-12)
    assert geometry.pair_geometry(own, own)["mean_output_principal_cosine"] == pytest.approx(1.0, abs=1e-12)
    independent = ll_factors(gen, 60, 40, 4)
    assert geometry.pair_geometry(f, f)["a_cosine"] == pytest.approx(1.0, abs=1e-12)
    assert abs(geometry.pair_geometry(f, independent)["a_cosine"]) < 4 / (4 * 40) ** 0.5  # ≈ 0, sd 1/√(r·in)
    assert not geometry.pair_geometry(f, independent)["started_together"]
    assert similarity.a_cosine(f, ll_factors(gen, 60, 30, 4)) is None  # another input size
    prefix = Factors(torch.cat([f.A, independent.A]), torch.cat([f.B, independent.B], 1), 1.0)  # r = 8, same first rows
    assert geometry.pair_geometry(f, prefix)["a_cosine"] == pytest.approx(1.0, abs=1e-12)
    assert geometry.pair_geometry(f, prefix)["started_together"]


@pytest.mark.parametrize("seeds,shared", [((0, 0), True), ((0, 1), False)])
def test_adapters_started_from_the_same_a_are_flagged(seeds, shared):
    """Same seed → same initial A; training moves A little, so the input subspaces agree by construction."""
    trained = []
    for seed, data_seed in zip(seeds, (10, 11)):  # different data for the two "tasks"
        model = build("bert")  # (seeds its own weights)
        torch.manual_seed(seed)
        ll.inject(model, ll.LoraConfig(r=4, alpha=8, targets=["query", "value"]))
        for step in range(5):
            train_step(model, inputs(seed=data_seed + 100 * step))
        trained.append(factors(model))
    result = geometry.adapters_geometry(*trained)
    assert result["shared_start"] is shared
    cos = result["summary"]["pair_a_cosine"]
    assert cos > 0.9 if shared else abs(cos) < 4 / (4 * 16) ** 0.5
    assert abs(result["summary"]["random_a_cosine"]) < 0.5


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_residual_init_adapters_are_not_measured_or_combined(init, tmp_path):
    """Their weight change is s·(B·A − B₀·A₀): the factors alone would give a wrong ΔW."""
    model = build("bert")
    ll.inject(model, ll.LoraConfig(r=2, targets=["query"], init=init))
    ll.save_adapter(model, tmp_path / "a")
    message = rf"was initialised with {init} \(W keeps the residual W − s·B₀·A₀\), so its weight change is s·\(B·A − B₀·A₀\)"
    for call in (lambda: factors(tmp_path / "a"), lambda: factors(model),
                 lambda: compose_io.compose([tmp_path / "a"], [1.0], tmp_path / "c", method="cat")):
        with pytest.raises(ll.AdapterError, match=message):
            call()
    assert not (tmp_path / "c").exists()
    from loralab.commands.info import adapter_summary

    summary = adapter_summary(tmp_path / "a")  # `loralab info`: config and ranks, no ΔW norm
    assert summary["config"]["init"] == init and summary["note"].startswith(f"init {init}: W keeps the residual")
    assert [m["delta_norm"] for m in summary["modules"].values()] == [None, None]
    assert [m["rank"] for m in summary["modules"].values()] == [2, 2]
