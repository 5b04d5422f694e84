"""Measurements with known answers: spectra, ranks, φ, amplification, intruders, ΔM/ΔD, CKA, the probe."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import loralab as ll
from conftest import build, inputs, train_step
from loralab.analysis import geometry, similarity, spectra
from loralab.analysis.factors import factors
from loralab.analysis.forgetting import linear_cka
from loralab.analysis.probe import allocate_ranks
from loralab.commands.analyze import analyze


def orthonormal(n: int, k: int, seed: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))[0]


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("k", [1, 3, 8])
def test_rank_k_plus_noise(k):
    """k equal directions (σ = 10) plus small noise: k@90 = k, effective and stable rank ≈ k, noise rank = k.

    The entropy effective rank weighs σ (not σ²), so n − k noise values of size ~ε·√n each add to it;
    at ε = 1e-5 they add under 5%; at ε = 1e-3 a rank-1 update reads 2.2 while k@90 is still 1."""
    n = 120
    u, v = orthonormal(n, k, 1), orthonormal(n, k, 2)
    noise = 1e-5 * torch.randn(n, n, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    svd = spectra.dense_svd(u @ v.T * 10.0 + noise)
    summary = spectra.summarize(svd)
    assert summary["k90"] == k and summary["k50"] == (k + 1) // 2 and summary["k99"] == k
    assert summary["effective_rank"] == pytest.approx(k, rel=0.05)
    assert summary["stable_rank"] == pytest.approx(k, rel=0.01)
    assert summary["noise_rank"] == k


def test_factor_spectrum_never_forms_the_product():
    """No op of the factor SVD makes a tensor anywhere near out·in elements (out = 3000, in = 2000, r = 8)."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(8, 2000, generator=gen), torch.randn(3000, 8, generator=gen)
    with LargestTensor() as mode:
        spectra.low_rank_svd(a, b, 0.5)
    assert mode.largest <= 3000 * 8, mode.largest  # the largest is Q_B·U_c, (out, r)


def test_factor_spectrum_equals_dense():
    """σ, U and V of s·B·A from the factors rebuild the dense product (atol 1e-9) and match its SVD."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(8, 400, generator=gen), torch.randn(600, 8, generator=gen)
    low = spectra.low_rank_svd(a, b, 0.5)
    dense = torch.linalg.svdvals(0.5 * b.double() @ a.double())[:8]
    torch.testing.assert_close(low.S, dense, atol=1e-9 * float(dense[0]), rtol=0)
    rebuilt = low.U @ torch.diag(low.S) @ low.V.T
    torch.testing.assert_close(rebuilt, 0.5 * b.double() @ a.double(), atol=1e-9, rtol=0)


def brute_force_phi(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    grid = torch.empty(u.shape[1], v.shape[1], dtype=torch.float64)
    for i in range(1, u.shape[1] + 1):
        for j in range(1, v.shape[1] + 1):
            grid[i - 1, j - 1] = (u[:, :i].T @ v[:, :j]).norm() ** 2 / min(i, j)
    return grid


def test_phi_identical_random_and_brute_force():
    n = 200
    u, v = orthonormal(n, 8, 1), orthonormal(n, 24, 2)
    torch.testing.assert_close(similarity.phi_grid(u, u), torch.ones(8, 8, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(similarity.phi_grid(u, v), brute_force_phi(u, v), atol=1e-12, rtol=0)
    mean = torch.stack([similarity.phi_grid(orthonormal(n, 8, s), orthonormal(n, 24, s + 1000)) for s in range(100)]).mean(0)
    torch.testing.assert_close(mean, similarity.random_phi(n, 8, 24), atol=0.01, rtol=0.2)


def test_injected_intruder_is_found_and_none_in_an_unchanged_weight():
    n = 256
    gen = torch.Generator().manual_seed(0)
    w0 = orthonormal(n, n, 4) @ torch.diag(torch.linspace(10, 0.1, n, dtype=torch.float64)) @ orthonormal(n, n, 5).T
    x, y = torch.randn(n, generator=gen, dtype=torch.float64), torch.randn(n, generator=gen, dtype=torch.float64)
    intruder = 20.0 * torch.outer(x / x.norm(), y / y.norm())
    found = geometry.intruder_dimensions(w0, w0 + intruder, k=10, epsilon=0.5)
    assert found["count"] == 1 and found["indices"] == [0]
    assert geometry.intruder_dimensions(w0, w0.clone(), k=10, epsilon=0.5)["count"] == 0
    small = geometry.intruder_dimensions(w0, w0 + 1e-3 * intruder, k=10, epsilon=0.5)
    assert small["count"] == 0  # a small change does not create a new top direction


def test_amplification_of_a_known_update():
    """ΔW along W0's weakest directions is amplified; along its strongest it is not (LoRA §7.3)."""
    n = 64
    u0, v0 = orthonormal(n, n, 1), orthonormal(n, n, 2)
    w0 = u0 @ torch.diag(torch.linspace(10, 0.01, n, dtype=torch.float64)) @ v0.T
    weak = spectra.dense_svd(5.0 * u0[:, -2:] @ v0[:, -2:].T)
    strong = spectra.dense_svd(5.0 * u0[:, :2] @ v0[:, :2].T)
    sigma = torch.linspace(10, 0.01, n, dtype=torch.float64)
    a = geometry.amplification(w0, weak, 2)
    b = geometry.amplification(w0, strong, 2)
    assert a["w_on_delta_directions"] == pytest.approx(float(sigma[-2:].norm()), rel=1e-9)
    assert a["amplification"] == pytest.approx(5 * 2**0.5 / float(sigma[-2:].norm()), rel=1e-9)  # 41.9
    assert b["amplification"] == pytest.approx(5 * 2**0.5 / float(sigma[:2].norm()), rel=1e-9)  # 0.5
    assert b["w_on_own_directions"] == pytest.approx(b["w_on_delta_directions"], rel=1e-9)


def test_magnitude_direction_of_known_changes():
    w0 = torch.randn(20, 30, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    scaled = geometry.magnitude_direction(w0, 1.5 * w0)  # magnitude only
    assert scaled["delta_d"] == pytest.approx(0, abs=1e-12)
    assert scaled["delta_m"] == pytest.approx(0.5 * float(w0.norm(dim=1).mean()), rel=1e-12)
    rotated = geometry.magnitude_direction(w0, w0.flip(1))
    assert rotated["delta_m"] == pytest.approx(0, abs=1e-12) and rotated["delta_d"] > 0.5


def test_linear_cka_invariances():
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    q = orthonormal(8, 8, 3)
    assert linear_cka(x, x @ q * 3.0 + 1.0) == pytest.approx(1.0, abs=1e-12)  # rotation, scale, shift
    assert linear_cka(x, torch.randn(50, 8, generator=torch.Generator().manual_seed(9), dtype=torch.float64)) < 0.5


def test_allocated_ranks_sum_to_the_budget():
    ranks = allocate_ranks({"a": 10, "b": 30, "c": 0, "d": 60}, budget=32)
    assert sum(ranks.values()) == 32 and min(ranks.values()) >= 1
    assert ranks["d"] > ranks["b"] > ranks["a"] >= ranks["c"] == 1


def test_layers_of_an_adapter_file_come_in_model_order(tmp_path):
    """Safetensors lists keys alphabetically (layer 10 before layer 2); measurements, `info` and composed
    configs list layers as the model does."""
    from transformers import BertConfig, BertForSequenceClassification

    from loralab.commands.compose import compose

    model = BertForSequenceClassification(BertConfig(vocab_size=16, hidden_size=8, num_hidden_layers=12,
                                                     num_attention_heads=2, intermediate_size=8))
    ll.inject(model, ll.LoraConfig(r=2, alpha=2, targets=["query"], init="gaussian"))
    ll.save_adapter(model, tmp_path / "a")
    in_model = [path for path, module in model.named_modules() if isinstance(module, ll.LoraLayer)]
    assert in_model[2] == "bert.encoder.layer.2.attention.self.query"
    assert list(factors(tmp_path / "a")) == in_model
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())["target_modules"] == in_model
    compose([tmp_path / "a", tmp_path / "a"], [1.0, 1.0], tmp_path / "c", method="cat", head="sum")
    assert json.loads((tmp_path / "c" / "adapter_config.json").read_text())["target_modules"] == in_model


@pytest.fixture
def adapter_pair(tmp_path):
    """The same trained adapter saved by loralab and re-saved by PEFT, with the base model on disk."""
    peft = pytest.importorskip("peft")
    base_dir = tmp_path / "base"
    build("bert").save_pretrained(base_dir)
    model = build("bert")
    ll.inject(model, ll.LoraConfig(r=4, alpha=8, targets=["query", "value"], dora=False))
    train_step(model, inputs())
    ll.save_adapter(model, tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(build("bert"), tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "peft")
    return base_dir, tmp_path


def test_peft_and_loralab_adapters_give_identical_analysis(adapter_pair):
    base_dir, root = adapter_pair
    assert json.loads((root / "peft" / "adapter_config.json").read_text())["peft_type"] == "LORA"
    ours = analyze([str(root / "ours")], root / "a", model=str(base_dir), plots=False)["sources"]["ours"]
    peft = analyze([str(root / "peft")], root / "b", model=str(base_dir), plots=False)["sources"]["peft"]
    assert ours["layers"].keys() == peft["layers"].keys()
    for path in ours["layers"]:
        a, b = ours["layers"][path], peft["layers"][path]
        assert a["spectrum"]["k90"] == b["spectrum"]["k90"]
        torch.testing.assert_close(torch.tensor(a["spectrum"]["singular_values"]),
                                   torch.tensor(b["spectrum"]["singular_values"]), atol=1e-12, rtol=0)
        assert a["amplification"]["amplification"] == pytest.approx(b["amplification"]["amplification"], rel=1e-9)
        assert a["intruders"]["count"] == b["intruders"]["count"]


def test_analyze_writes_every_plot_and_compares_ranks(adapter_pair, tmp_path):
    base_dir, root = adapter_pair
    model = build("bert")
    ll.inject(model, ll.LoraConfig(r=8, alpha=16, targets=["query", "value"]))
    train_step(model, inputs())
    ll.save_adapter(model, root / "r8")
    result = analyze([str(root / "ours"), str(root / "r8")], tmp_path / "out", model=str(base_dir))
    pair = result["pairs"]["ours vs r8"]
    assert (pair["k1"], pair["k2"]) == (4, 8) and 0 <= pair["mean_top_phi"] <= 1
    # both injected right after build()'s seed: r = 8 drew r = 4's rows first in the first layer only
    assert pair["shared_start"] == ["bert.encoder.layer.0.attention.self.query"]
    assert "**Shared start** (ours vs r8): in 1 of 4 layers" in (tmp_path / "out" / "analysis.md").read_text()
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"analysis.json", "analysis.md", "spectra.png", "effective_rank.png", "k90.png", "intruders.png",
            "magnitude_direction.png", "phi_ours__r8.png"} <= files
    assert all((tmp_path / "out" / f).stat().st_size > 5000 for f in files if f.endswith(".png"))


def test_sources_of_one_name_are_kept_apart(adapter_pair, tmp_path):
    """runs/a/x and runs/b/x were both "x": the second report replaced the first, and x was compared with itself."""
    import shutil

    from loralab.errors import ConfigError

    base_dir, root = adapter_pair
    for parent in ("a", "b"):
        shutil.copytree(root / "ours", tmp_path / parent / "x")
    result = analyze([str(tmp_path / "a" / "x"), str(tmp_path / "b" / "x")], tmp_path / "out", model=str(base_dir),
                     plots=False)
    assert list(result["sources"]) == ["a/x", "b/x"] and list(result["pairs"]) == ["a/x vs b/x"]
    with pytest.raises(ConfigError, match="name the same directory more than once"):
        analyze([str(tmp_path / "a" / "x"), str(tmp_path / "a" / "x")], tmp_path / "out2", model=str(base_dir))


@pytest.mark.parametrize("setting, message", [
    ({"rank": 0}, "--rank is how many top directions of a dense update amplification uses: ≥ 1, got 0."),
    ({"intruder_k": 0}, "--intruder-k is how many top singular vectors are checked for intruders: ≥ 1, got 0."),
    ({"epsilon": 1.5}, "--epsilon is a cosine threshold in (0, 1)"),
])
def test_analyze_refuses_settings_that_measure_nothing(adapter_pair, tmp_path, setting, message):
    """--epsilon 1.5 made every top direction an intruder; --rank 0 silently became 8."""
    from loralab.errors import ConfigError

    base_dir, root = adapter_pair
    with pytest.raises(ConfigError) as err:
        analyze([str(root / "ours")], tmp_path / "out", model=str(base_dir), **setting)
    assert str(err.value).startswith(message) and not (tmp_path / "out").exists()


def test_dora_summary_reports_the_real_weight_change(tmp_path):
    base_dir = tmp_path / "base"
    build("bert").save_pretrained(base_dir)
    model = build("bert")
    ll.inject(model, ll.LoraConfig(r=2, alpha=4, targets=["query"], dora=True))
    train_step(model, inputs())
    ll.save_adapter(model, tmp_path / "dora")
    from loralab.commands.info import adapter_summary

    summary = adapter_summary(tmp_path / "dora", model=str(base_dir))
    layer = model.bert.encoder.layer[0].attention.self.query
    merged = layer.variants["default"].merged_weight(layer, layer.weight_out_in(), "default")
    expected = float((merged.double() - layer.weight_out_in().double()).norm())
    got = summary["modules"]["bert.encoder.layer.0.attention.self.query"]
    assert got["dora"] and got["delta_norm"] == pytest.approx(expected, rel=1e-6)
    assert got["delta_norm"] != pytest.approx(float(layer.delta_weight("default").detach().norm()), rel=1e-3)
    f = factors(tmp_path / "dora")["bert.encoder.layer.0.attention.self.query"]
    assert f.magnitude is not None and f.rank == 2


@pytest.mark.parametrize("dora", [False, True])
def test_analyze_an_adapter_that_names_no_base(tmp_path, dora):
    """An adapter saved from a model built in code (base_model_name_or_path null) was refused outright; its spectra
    and effective ranks need only A, B and s. What needs the base is left out and named."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 10), torch.nn.ReLU(), torch.nn.Linear(10, 4))
    ll.inject(model, ll.LoraConfig(r=3, targets=["0", "2"], dora=dora))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    saved = ll.save_adapter(model, tmp_path / "adapter")
    assert json.loads((saved / "adapter_config.json").read_text())["base_model_name_or_path"] is None
    result = analyze([str(saved)], tmp_path / "analysis")
    report = next(iter(result["sources"].values()))
    assert report["summary"]["layers"] == 2 and report["summary"]["effective_rank_median"] > 1
    assert report["summary"]["amplification_median"] is None
    assert "amplification, intruder dimensions and ΔM/ΔD need the base weights: give --model" in report["needs_base"]
    assert "give --model" in (tmp_path / "analysis" / "analysis.md").read_text()


def test_analyze_refuses_a_used_out_and_overwrite_replaces_only_an_analysis(adapter_pair, tmp_path):
    """Issue 34: a second analyze into the same --out wrote over it and left the first one's plots beside the new."""
    from loralab.errors import ConfigError

    base_dir, root = adapter_pair
    out = tmp_path / "analysis"
    analyze([str(root / "ours")], out, model=str(base_dir), plots=False)
    (out / "old_plot.png").write_bytes(b"a plot of the previous analysis")
    with pytest.raises(ConfigError, match=rf"--out {out} holds a previous analysis; add --overwrite to replace it, or "
                                          r"give a new directory \(nothing was written\)\."):
        analyze([str(root / "ours")], out, model=str(base_dir), plots=False)
    analyze([str(root / "ours")], out, model=str(base_dir), plots=False, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["analysis.json"]  # the old analysis is gone as a whole
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "chapter1.tex").write_text("years of work")
    with pytest.raises(ConfigError, match="holds no analysis.json: --overwrite replaces only a previous analysis"):
        analyze([str(root / "ours")], thesis, model=str(base_dir), plots=False, overwrite=True)
    assert (thesis / "chapter1.tex").read_text() == "years of work"
