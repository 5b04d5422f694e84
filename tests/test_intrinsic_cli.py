"""SAID through the trainer and the d90 sweep end to end, on the tiny BERT and real data."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from test_training import ENV, run_cli, train_args


def test_said_trains_saves_and_reloads(tiny, tmp_path):
    run = tmp_path / "said"
    run_cli(train_args(tiny, run, "--method", "said", "--d", "300", "--lr", "5e-2", "--epochs", "1"))
    result = json.loads((run / "result.json").read_text())
    assert result["trainable_params"] == 300
    assert result["subspace"]["full_dim"] == result["total_params"] - 300
    assert sorted(p.name for p in (run / "intrinsic").iterdir()) == ["intrinsic.json", "intrinsic.safetensors"]
    evaluated = json.loads(run_cli(["eval", "--run", str(run)]).stdout)
    assert evaluated["test"]["accuracy"] == result["test"]["accuracy"]
    run_cli(["merge", "--run", str(run), "--out", str(tmp_path / "merged")])
    merged = json.loads(run_cli(["eval", "--model", str(tmp_path / "merged"), "--data", tiny["data"]]).stdout)
    assert abs(merged["test"]["loss"] - result["test"]["loss"]) < 1e-5

    refused = run_cli(["analyze", str(run), "--out", str(tmp_path / "a")], check=False)
    assert refused.returncode == 2 and (f"{run} is a said run, which keeps neither adapter/ nor model/; analysis reads "
                                        f"adapters and fully tuned models. Merge it first: `loralab merge {run} --out "
                                        f"DIR`, then analyze DIR with --model {tiny['model']}.") in refused.stderr
    no_base = run_cli(["analyze", str(tmp_path / "merged"), "--out", str(tmp_path / "a")], check=False)
    assert no_base.returncode == 2 and "pass that base (--model, e.g. minilm)" in no_base.stderr
    run_cli(["analyze", str(tmp_path / "merged"), "--model", tiny["model"], "--out", str(tmp_path / "a")])
    layers = json.loads((tmp_path / "a" / "analysis.json").read_text())["sources"]["merged"]["layers"]
    spectra = [layer["spectrum"] for layer in layers.values()]
    # a random subspace moves every linear layer, in (nearly) every direction: θ − θ0 = P·θ_d
    assert len(spectra) > 0 and all(s["effective_rank"] > 0.5 * min(s["shape"]) for s in spectra), spectra


def test_intrinsic_sweep_writes_d90_report_and_plot(tiny, tmp_path):
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "loralab", "intrinsic", "--model", tiny["model"], "--data", tiny["data"],
           "--dims", "20,400", "--seeds", "0", "--epochs", "1", "--max-train", "144", "--lr", "5e-2",
           "--full-lr", "5e-3", "--refine", "1", "--threshold", "0.5", "--executor", "inline", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "intrinsic.json").read_text())
    assert report["m"] > 20  # d=20 ≤ m runs DID
    methods = {p["d"]: p["method"] for p in report["points"]}
    assert methods[20] == "did" and methods[400] == "said"
    assert report["threshold_value"] == 0.5 * report["full"]["validation"]
    reached = [p["d"] for p in report["points"] if p["validation_mean"] >= report["threshold_value"]]
    assert report["d90"] == (min(reached) if reached else None)
    assert (out / "intrinsic.png").stat().st_size > 10_000
    assert "d90" in (out / "intrinsic.md").read_text()


def test_lr_scales_with_d_only_when_asked():
    """lr·√(lr_ref_d/d): 0.3 at d=300 becomes 0.15 at d=1200; without lr_ref_d every d gets lr."""
    from loralab.errors import ConfigError
    from loralab.experiments.d90_sweep import SweepConfig, run_config, subspace_lr

    scaled = SweepConfig(lr=0.3, lr_ref_d=300)
    assert subspace_lr(scaled, 1200) == 0.15
    assert subspace_lr(scaled, None) == 0.3  # the full-FT baseline is not a subspace run
    assert subspace_lr(SweepConfig(lr=0.3), 1200) == 0.3
    assert run_config(scaled, "said", 0, d=3000).lr == 0.09487
    with pytest.raises(ConfigError, match=r"--lr-ref-d is the d at which --lr applies, a positive integer; got 0\."):
        SweepConfig(lr_ref_d=0)
