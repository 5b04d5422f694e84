"""The analysis toolkit on real (tiny) runs: telemetry during training, the probe, analyze on runs."""

from __future__ import annotations

import json
import math

import pytest
import torch

from loralab.cli import main
from loralab.commands.analyze import analyze
from loralab.commands.probe import ProbeConfig, run_probe
from test_training import train_args

pytestmark = pytest.mark.usefixtures("keep_threads")


@pytest.fixture(scope="module")
def runs(tiny, tmp_path_factory):
    """Full FT, LoRA r=2 and r=8, DoRA r=4 on the tiny BERT, with telemetry every 6 steps."""
    root = tmp_path_factory.mktemp("runs")
    for name, extra in {"full": ["--method", "full", "--lr", "1e-3"], "r2": ["--r", "2"], "r8": ["--r", "8"],
                        "dora": ["--method", "dora", "--r", "4"]}.items():
        assert main(train_args(tiny, root / name, "--epochs", "1", "--analysis-every", "6", *extra)) == 0
    return root


def telemetry(run) -> list[dict]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [x for x in lines if x["type"] == "analysis"]


@pytest.mark.parametrize("name,layers", [("r8", 4), ("dora", 4), ("full", 13)])
def test_telemetry_logs_every_layer_every_n_steps(runs, name, layers):
    records = telemetry(runs / name)
    assert [r["step"] for r in records] == [6, 12, 18]
    for record in records:
        assert len(record["layers"]) == layers  # q/v of 2 blocks; full FT: 6 linear layers × 2 blocks + the pooler
        for row in record["layers"].values():
            assert set(row) == {"effective_rank", "delta_norm", "delta_m", "delta_d"}
            assert row["delta_norm"] > 0 and row["effective_rank"] >= 1
    if name == "r8":
        assert all(r["effective_rank"] <= 8 for rec in records for r in rec["layers"].values())


def test_analyze_runs_of_every_kind(runs, tiny, tmp_path):
    result = analyze([str(runs / n) for n in ("full", "r2", "r8", "dora")], tmp_path, model=tiny["model"])
    kinds = {name: report["kind"] for name, report in result["sources"].items()}
    assert kinds == {"full": "full", "r2": "lora", "r8": "lora", "dora": "dora"}
    assert result["sources"]["r2"]["summary"]["k90_median"] <= 2
    assert set(result["pairs"]) >= {"r2 vs r8", "full vs r8"}
    assert len(result["pairs"]["full vs r8"]["layers"]) == 4  # full FT's q/v layers meet the adapter's
    assert len(result["sources"]["dora"]["trajectory"]) == 3
    text = (tmp_path / "analysis.md").read_text()
    assert "| r8 | lora | 4 |" in text and "phi_r2__r8.png" in text


def test_a_merged_run_measures_as_its_adapter(runs, tiny, tmp_path):
    """`loralab merge` then analyze the model directory: the DoRA run's own layers, the same spectra as
    from its adapter (fp32 merge rounding only); the layers it left alone (bit-identical) are not zeros in
    the medians. An unchanged model has nothing to measure."""
    from loralab.errors import AdapterError

    assert main(["merge", str(runs / "dora"), "--out", str(tmp_path / "merged")]) == 0
    result = analyze([str(runs / "dora"), str(tmp_path / "merged")], tmp_path / "a", model=tiny["model"], plots=False)
    adapter, merged = result["sources"]["dora"]["layers"], result["sources"]["merged"]["layers"]
    assert list(merged) == list(adapter) and len(merged) == 4  # not the 13 linear layers of the model
    for path in adapter:
        torch.testing.assert_close(torch.tensor(merged[path]["spectrum"]["singular_values"]),
                                   torch.tensor(adapter[path]["spectrum"]["singular_values"]), atol=2e-6, rtol=1e-4)
    with pytest.raises(AdapterError, match="equals .* in every linear layer: there is no update to measure"):
        analyze([tiny["model"]], tmp_path / "b", model=tiny["model"], plots=False)


def test_probe_predicts_ranks_per_layer(tiny):
    result = run_probe(ProbeConfig(model=tiny["model"], data=tiny["data"], batches=4, batch_size=8, head_steps=20))
    assert result["examples"] == 32 and len(result["layers"]) == 4
    for ranks in result["layers"].values():
        assert set(ranks) == {"gradient_effective_rank", "gradient", "gradient_covariance", "activation"}
        assert 1 <= ranks["gradient"] <= 32 and 1 <= ranks["activation"] <= 32
        assert 1.0 <= ranks["gradient_effective_rank"] <= 32.0
    assert set(result["predicted_rank"]) == {"gradient_effective_rank", "gradient", "gradient_covariance", "activation"}
    median = sorted(r["gradient_effective_rank"] for r in result["layers"].values())
    median = (median[1] + median[2]) / 2
    own = result["recommendation"]["from_predictor"]  # the power of two nearest the primary's median over layers
    assert own["rank"] == 2 ** round(math.log2(median)) and own["try"][0] <= own["rank"] <= own["try"][1]
    assert result["recommendation"]["predictor"] == "gradient_effective_rank"


def benchmark_scored(validated: bool) -> dict:
    return {"predictor": "gradient_effective_rank", "rho": 0.9 if validated else -0.26, "n": 13,
            "p_value": 0.001 if validated else 0.81, "power_rho_0.8": 0.82, "validated": validated,
            "needed_rank": {"units": 13, "median": 2.5, "lowest": ["amazon", 0.99], "highest": ["trec-c2", 7.2]},
            "allocation_vs_uniform": {"units": 4, "lower": 1, "interval_below_0": 0, "interval_above_0": 2},
            "source": "docs/study/rank/rank.json"}


def test_probe_recommends_from_the_predictor_until_the_benchmark_finds_it_does_not_predict(monkeypatch):
    """Per-layer values with median 5.5 (quartiles 3.25 and 8.5): unscored or validated → r = 4 (try 2–16) from the
    predictor; scored and not validated → the power of two covering the benchmark's highest r90 (7.2 → 8), trying
    from its median (2.5 → 2), with the predictor's own value kept beside it and said so in probe.md's words."""
    from loralab.analysis import rank_predictors
    from loralab.commands.probe import allocation_text, recommend, scored_text

    values = [2.0, 4.0, 5.0, 6.0, 9.0, 12.0]
    monkeypatch.setattr(rank_predictors, "BENCHMARK_SCORE", None)
    unscored = recommend(values)
    assert (unscored["rank"], unscored["try"], unscored["basis"]) == (4, [2, 16], "predictor")
    assert scored_text(unscored).endswith("has not finished, so this rank is a guess to try, not a validated prediction")
    monkeypatch.setattr(rank_predictors, "BENCHMARK_SCORE", benchmark_scored(True))
    assert (recommend(values)["rank"], recommend(values)["basis"]) == (4, "predictor")
    monkeypatch.setattr(rank_predictors, "BENCHMARK_SCORE", benchmark_scored(False))
    advice = recommend(values)
    assert (advice["rank"], advice["try"], advice["basis"], advice["from_predictor"]) == (
        8, [2, 8], "benchmark", {"rank": 4, "try": [2, 16]})
    assert scored_text(advice) == (
        "from what the rank benchmark measured, not from this task: its 13 tasks needed r90 0.99–7.2 (median 2.5; r90 "
        "on held-out loss, MiniLM-L6 classification), and gradient_effective_rank, the pre-registered predictor, did "
        "not predict them (Spearman ρ = -0.26 against the measured needed ranks of 13 tasks, one-sided p = 0.81). Its "
        "value for this task would give r = 4 (2–16)")
    v2 = {**advice, "benchmark": {**advice["benchmark"], "test": "H1-v2", "n": 17, "rho": -0.2, "p_value": 0.78}}
    assert "(Spearman ρ = -0.20 against the measured needed ranks of 17 units: these tasks and benchmark v2's " \
           "planted-rank ones, one-sided p = 0.78)" in scored_text(v2)
    assert allocation_text(advice["benchmark"]).startswith(
        "On the rank benchmark this allocation had lower test loss than uniform at equal rank units on 1 of 4 tasks "
        "(paired 95% interval below 0 on 0, above 0 on 2;")


def test_probe_writes_a_rank_pattern_that_train_takes(tiny, tmp_path, capsys):
    """`loralab probe` → rank_pattern.json (r × layers rank units by gradient rank) → `loralab train
    --rank-pattern FILE`: the adapter has exactly the allocated ranks, and the run's config the pattern itself."""
    from loralab.analysis.factors import factors

    out = tmp_path / "probe"
    assert main(["probe", "--model", tiny["model"], "--data", tiny["data"], "--batches", "2", "--batch-size", "8",
                 "--head-steps", "5", "--r", "3", "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    result = json.loads((out / "probe.json").read_text())
    assert printed["recommendation"] == result["recommendation"]
    assert printed["train_uniform"].split()[-2:] == ["--rank", str(result["recommendation"]["rank"])]
    assert f"**Recommended rank: {result['recommendation']['rank']}**" in (out / "probe.md").read_text()
    allocated = result["allocated_rank"]
    assert len(allocated) == 4 and sum(allocated.values()) == 3 * 4 and min(allocated.values()) >= 1
    assert (out / "probe.png").stat().st_size > 5000 and "| allocated |" in (out / "probe.md").read_text()
    command = printed["train"].split()
    assert command[:2] == ["loralab", "train"] and command[-2:] == ["--rank-pattern", str(out / "rank_pattern.json")]
    assert main(train_args(tiny, tmp_path / "run", "--epochs", "1", "--max-train", "16", *command[-2:])) == 0
    assert {path: f.rank for path, f in factors(tmp_path / "run" / "adapter").items()} == allocated
    kept = json.loads((tmp_path / "run" / "config.json").read_text())["lora"]["rank_pattern"]
    assert kept == json.loads((out / "rank_pattern.json").read_text())


def test_probe_prints_its_advice_and_both_train_commands(tiny, tmp_path, capsys):
    """Without --json the probe prints sentences a person reads: the rank with how it was made, then the uniform and
    the allocated train command, each on its own indented line."""
    out = tmp_path / "probe"
    assert main(["probe", "--model", tiny["model"], "--data", tiny["data"], "--batches", "2", "--batch-size", "8",
                 "--head-steps", "5", "--r", "3", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    advice = json.loads((out / "probe.json").read_text())["recommendation"]
    assert lines[0].startswith(f"Recommended rank: {advice['rank']} (try {advice['try'][0]}–{advice['try'][1]}), ")
    assert lines[1].startswith("Allocated 3 × 4 layers = 12 rank units in proportion to each layer's "
                               "gradient_effective_rank. ")
    base = f"    loralab train --model {tiny['model']} --data {tiny['data']}"
    assert lines[-4:] == ["Train with one rank:", f"{base} --rank {advice['rank']}", "or with the allocated ranks:",
                          f"{base} --rank-pattern {out / 'rank_pattern.json'}"]


def test_a_rank_pattern_file_that_cannot_be_read(tiny, tmp_path, capsys):
    code = main(train_args(tiny, tmp_path / "run", "--rank-pattern", str(tmp_path / "missing.json")))
    assert code == 2 and (f"--rank-pattern {tmp_path / 'missing.json'}: cannot read the file (No such file or "
                          "directory); give a JSON object like '{\"query\": 4}' or the path of a .json file holding "
                          "one.") in capsys.readouterr().err
    (tmp_path / "list.json").write_text("[4, 2]")
    code = main(train_args(tiny, tmp_path / "run", "--alpha-pattern", str(tmp_path / "list.json")))
    assert code == 2 and "--alpha-pattern must be a JSON object {regex: number}, got '[4, 2]'." in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_forgetting_of_classifier_runs(runs, tiny, capsys):
    """CKA drift per layer against the freshly loaded base: a q/v adapter leaves the embeddings alone (CKA 1
    there, exactly), full fine-tuning does not; both drift at the last layer."""
    found = {}
    for name in ("r8", "full"):
        capsys.readouterr()
        assert main(["forgetting", str(runs / name), "--on", tiny["data"], "--max-texts", "12", "--max-length", "32"]) == 0
        found[name] = json.loads(capsys.readouterr().out)
    r8, full = found["r8"], found["full"]
    assert (r8["on"], r8["texts"], r8["trained_on"]) == (tiny["data"], 12, tiny["data"])
    assert len(r8["cka_per_layer"]) == 3  # embeddings and two blocks
    assert r8["cka_per_layer"][0] == pytest.approx(1.0, abs=1e-12) and full["cka_per_layer"][0] < 1 - 1e-6
    assert 0 < r8["drift"] == pytest.approx(1 - r8["cka_per_layer"][-1]) and full["drift"] > 0

