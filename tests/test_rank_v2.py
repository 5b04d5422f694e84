"""Rank benchmark v2's reading (`experiments.rank_v2`): the registered and dense units tested together on the
scale-free predictors, the spread, the dense units against k, the planted layer's place, the report files."""

import json
import math

import pytest

from loralab.experiments import rank_v2

LAYERS = [f"layer.{i}.{kind}" for i in range(6) for kind in ("query", "value")]


def write_benchmarks(tmp_path, registered: dict[str, float], dense: dict[int, float], primary) -> dict:
    """rank.json with ``registered`` {unit: r90}, dense_units.json with ``dense`` {k: r90}, and predictors whose
    primary is ``primary(r90)`` (the planted layer's value the highest for dense units)."""
    home = tmp_path / "predictors"
    home.mkdir()
    rank = {"units": [{"name": u, "needed_rank": r, "interval": [r / 2, r * 2], "kept": True, "seeds": 2}
                      for u, r in registered.items()]}
    units = {f"dense-k{k}": {"k": k, "needed_rank": r, "interval": [r / 1.5, r * 1.5], "kept": True, "seeds": 2}
             for k, r in dense.items()}
    for name, r in {**registered, **{f"dense-k{k}": r for k, r in dense.items()}}.items():
        task = {"gradient_effective_rank": primary(r), "gradient_null_rank": 1.0, "activation_rank": 100.0 + r,
                "twonn_dimension": 20.0, "gradient_importance": 1e3 if name in registered else 0.1}
        layers = {p: {"gradient_effective_rank": 1.0 + i, "gradient_null_rank": 0} for i, p in enumerate(LAYERS)}
        layers["layer.5.value"]["gradient_effective_rank"] = 99.0  # the planted one, highest
        (home / f"{name}.json").write_text(json.dumps({"task": task, "layers": layers, "planted": "layer.5.value"}))
    (tmp_path / "rank.json").write_text(json.dumps(rank))
    (tmp_path / "dense.json").write_text(json.dumps({"units": units}))
    return {"rank": str(tmp_path / "rank.json"), "dense": str(tmp_path / "dense.json"), "home": str(home),
            "out": str(tmp_path / "v2.json"), "figure": str(tmp_path / "figures" / "v2.png")}


def test_a_predictor_that_orders_every_unit_is_supported_across_both_kinds(tmp_path):
    registered = {f"u{i}": 1.0 + 0.5 * i for i in range(13)}
    paths = write_benchmarks(tmp_path, registered, {4: 6.0, 16: 12.0, 32: 20.0, 64: 30.0}, primary=math.log)
    report = rank_v2.run(**paths)
    test = report["test"]
    assert test["n"] == 17 and test["spearman"] == pytest.approx(1.0) and test["p_value"] < 1e-4 and test["supported"]
    assert test["power_rho_0.8"]["alpha_0.01"] > 0.8
    assert "gradient_importance" not in test["predictors"]  # its size depends on the loss: not compared across kinds
    assert all("partial_rho_given_log2_classes" not in row for row in test["predictors"].values())
    assert report["spread"]["ratio"] == pytest.approx(30.0) and report["spread"]["meets_target"]
    assert report["spread"]["lowest"] == ["u0", 1.0] and report["spread"]["highest"] == ["dense-k64", 30.0]
    assert report["within_dense"]["n"] == 4 and report["within_dense"]["needed_rank"]["rho"] == pytest.approx(1.0)
    assert report["within_dense"]["needed_rank"]["p_value"] == pytest.approx(1 / 24, abs=0.01)
    assert report["planted_position"]["dense-k4"]["gradient_effective_rank"] == 1
    assert json.loads((tmp_path / "v2.json").read_text())["test"]["n"] == 17
    assert (tmp_path / "figures" / "v2.png").stat().st_size > 0
    text = (tmp_path / "v2.md").read_text()
    assert "H1-v2 is **supported**" in text and "n = 17" in text and "**30.0×**" in text


def test_a_predictor_that_runs_against_the_needed_rank_is_not_supported_and_dropped_units_do_not_count(tmp_path):
    registered = {f"u{i}": 1.0 + 0.5 * i for i in range(13)}
    paths = write_benchmarks(tmp_path, registered, {4: 3.0, 16: 9.0, 32: 25.0, 64: 30.0}, primary=lambda r: -r)
    rank = json.loads((tmp_path / "rank.json").read_text())
    rank["units"][0]["kept"] = False
    (tmp_path / "rank.json").write_text(json.dumps(rank))
    report = rank_v2.run(**paths)
    assert report["test"]["n"] == 16 and report["test"]["spearman"] == pytest.approx(-1.0)
    assert not report["test"]["supported"] and report["test"]["p_value"] > 0.99
    assert report["spread"]["lowest"][0] == "u1"
    assert "H1-v2 is **not supported**" in (tmp_path / "v2.md").read_text()


def test_claim_9_holds_fails_or_stays_inconclusive_by_the_test_and_its_power():
    from loralab.experiments.claims_geometry import rank_verdict, test_line
    from loralab.experiments.stats import FAILS, HOLDS, INCONCLUSIVE

    v2 = {"primary": "g", "spearman": 0.85, "p_value": 0.001, "n": 17, "power_rho_0.8": {"alpha_0.01": 0.93}}
    assert rank_verdict(v2) == HOLDS
    assert rank_verdict({**v2, "spearman": -0.26, "p_value": 0.81}) == FAILS
    assert rank_verdict({**v2, "spearman": 0.5, "p_value": 0.03, "power_rho_0.8": {"alpha_0.01": 0.6}}) == INCONCLUSIVE
    assert rank_verdict({"spearman": None, "p_value": None}) == INCONCLUSIVE
    v1 = {"primary": "g", "spearman": -0.26, "p_value": 0.81, "n": 13, "power": {"alpha_0.01": 0.82}}
    assert rank_verdict(v1) == FAILS
    assert test_line(v1, "predictor", "units") == ("predictor g against the measured needed rank r90 over n = 13 units: "
                                                  "Spearman ρ = -0.26, one-sided permutation p = 0.81 (α = 0.01), "
                                                  "power at ρ = 0.8: 0.82")


def test_the_dense_status_reads_grid_choice_and_whole_ladders_from_the_archive(tmp_path, monkeypatch):
    from loralab.experiments import dense_units as du

    monkeypatch.setattr(du, "version", lambda: "v9")
    monkeypatch.setattr(du, "bias_alone", lambda k, root: {"test_loss": 1.0})
    rows = [(4, 4, 0, lr, v) for lr, v in ((3e-4, 0.5), (1e-3, 0.3), (3e-3, 0.4))]
    rows += [(4, r, 0, 1e-3, v) for r, v in ((1, 0.5), (16, 0.1), (64, 0.1))] + [(4, 1, 1, 1e-3, 0.6)]
    rows += [(16, 4, 0, 3e-4, 0.9), (16, 4, 0, 1e-3, 0.8)]  # an unfinished grid, its best at the open edge
    lines = [{"run": "x-v9", "result": {"k": k, "r": r, "seed": s, "lr": lr, "validation_loss": v, "test_loss": v}}
             for k, r, s, lr, v in rows] + [{"run": "old-v1", "result": {"k": 4, "r": 64, "seed": 0, "lr": 1e-3,
                                                                        "validation_loss": 0.0, "test_loss": 0.0}}]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    status = rank_v2.dense_status(str(tmp_path / "a.jsonl"), str(tmp_path))
    k4 = status["dense-k4"]
    assert k4["lr"] == 1e-3 and k4["grid"] == {"0.0003": 0.5, "0.001": 0.3, "0.003": 0.4}
    # seed 0: g = 0, 5/9, 7/9, 1, 1 at r = 0, 1, 4, 16, 64; 0.9 crossed 0.45 of the way from log2 4 to log2 16
    assert k4["seeds"][0] == {"rungs": [1, 4, 16, 64], "r90": pytest.approx(2 ** (2 + 2 * (0.9 - 7 / 9) / (2 / 9)))}
    assert k4["seeds"][1] == {"rungs": [1], "r90": None}
    assert status["dense-k16"]["lr"] is None and status["dense-k64"] == {"grid": {}, "lr": None, "seeds": {}}


def test_claim_9s_figure_shows_the_v2_units_when_the_study_has_them(tmp_path):
    from loralab.experiments.study_figures import claim_9

    registered = {f"u{i}": 1.0 + 0.5 * i for i in range(13)}
    v2 = rank_v2.run(**write_benchmarks(tmp_path, registered, {4: 6.0, 16: 12.0, 32: 20.0, 64: 30.0}, primary=math.log))
    c = {"primary": "gradient_effective_rank", "spearman": -0.26, "n": 13, "units": [], "allocation": {}, "v2": v2}
    assert claim_9(c, tmp_path / "claim9.png").stat().st_size > 10_000
    v1 = {**c, "v2": None, "units": [{"name": "u", "kept": True, "needed_rank": 2.0, "interval": [1.0, 3.0],
                                      "predicted": {"gradient_effective_rank": 3.0}}]}
    assert claim_9(v1, tmp_path / "claim9_v1.png").stat().st_size > 10_000
