"""Benchmark v2's dense units (`experiments.dense_units`): the exact bias-alone rung, a run that learns with dropout
off and keeps its best checkpoint, the lr grid extended past an edge, the unit summary and third-seed rule, the
archive read back instead of retrained."""

import json
import math

import pytest
import torch

from conftest import short_dense_schedule
from loralab.errors import ConfigError
from loralab.experiments import dense_pilot as dp
from loralab.experiments import dense_units as du
from loralab.experiments.launcher import LocalExecutor, RayExecutor


@pytest.fixture
def tiny_units(tiny_dense, monkeypatch):
    """The units on the tiny BERT (`conftest.tiny_dense`), 40–60 steps, validation every 20."""
    short_dense_schedule(monkeypatch, du)
    return tiny_dense


def test_the_bias_alone_rung_is_the_mean_shift_and_no_constant_does_better_on_training_texts(tiny_units):
    found = dp.targets(2, tiny_units)
    change = found["train"] - found["base_train"]
    shift = change.mean(0)
    alone = du.bias_alone(2, tiny_units)
    assert alone["test_loss"] == pytest.approx(float(((found["base_test"] + shift - found["test"]) ** 2).mean()))
    assert alone["test_loss"] < dp.base_losses(2, tiny_units)["test"]
    train_mse = lambda b: float(((change - b) ** 2).mean())  # noqa: E731
    nudge = 0.01 * change.std() * torch.randn(change.shape[1], generator=torch.Generator().manual_seed(0))
    assert train_mse(shift) < train_mse(shift + nudge) and train_mse(shift) < train_mse(shift - nudge)


def test_a_run_learns_below_the_bias_alone_keeps_its_best_checkpoint_and_repeats_exactly(tiny_units):
    """Dropout off: the same seed gives the same run to the last digit; another seed another run."""
    first = du.train_rung(2, 4, 0, 1e-4, str(tiny_units))
    assert first["test_loss"] < du.bias_alone(2, tiny_units)["test_loss"]
    assert [step for step, _ in first["curve"]] == [20, 40, 60]
    assert first["validation_loss"] == min(loss for _, loss in first["curve"])
    assert first["best_step"] == min(first["curve"], key=lambda c: c[1])[0]
    again, other = du.train_rung(2, 4, 0, 1e-4, str(tiny_units)), du.train_rung(2, 4, 1, 1e-4, str(tiny_units))
    assert again["curve"] == first["curve"] and again["test_loss"] == first["test_loss"]
    assert other["test_loss"] != first["test_loss"]


def test_the_student_trains_in_eval_mode_from_the_exact_bias_with_only_bias_and_lora_trainable(tiny_units):
    start = torch.linspace(-1, 1, 32)
    model, _ = du.student(4, start)
    assert not any(m.training for m in model.modules())
    assert torch.equal(model.bias.detach(), start) and model.bias.data_ptr() != start.data_ptr()
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "bias" in names and all(n == "bias" or "lora_" in n for n in names)
    head, _ = du.student(0, torch.zeros(32))
    assert {n for n, p in head.named_parameters() if p.requires_grad} == {"bias"}


def test_the_schedule_warms_up_then_reaches_zero_at_the_cap(tiny_units):
    assert [du.lr_factor(s) for s in (0, 4, 32, 59, 60)] == pytest.approx([0.2, 1.0, 28 / 55, 1 / 55, 0.0])


class FakeRuns:
    """Validation MSE = (log10 lr − log10 best)², the best lr per unit given; every requested job recorded."""

    def __init__(self, best: dict[int, float]):
        self.best, self.asked = best, []

    def get(self, jobs, desc):
        self.asked.append(sorted(jobs))
        return {job: {"validation_loss": (math.log10(job[3]) - math.log10(self.best[job[0]])) ** 2} for job in jobs}


def test_the_lr_grid_is_extended_past_an_edge_at_most_twice_at_rank_4_seed_0():
    runs = FakeRuns({4: 1e-3, 64: 1e-2, 16: 1e-6})
    chosen = du.choose_lrs(runs, ks=(64, 16, 4))
    assert chosen[4] == {"lr": 1e-3, "grid": pytest.approx({3e-4: 0.27, 1e-3: 0.0, 3e-3: 0.23}, abs=0.01),
                         "at_edge": False}
    assert chosen[64]["lr"] == 9e-3 and set(chosen[64]["grid"]) == {3e-4, 1e-3, 3e-3, 9e-3, 2.7e-2}
    assert chosen[16]["lr"] == pytest.approx(3.33e-5) and chosen[16]["at_edge"]  # still an edge after two extensions
    assert len(runs.asked) == 3 and all(job[1:3] == (du.GRID_RANK, 0) for asked in runs.asked for job in asked)
    assert [job[0] for job in runs.asked[1]] == [16] * 4 + [64] * 4  # k = 4 settled after the first grid


def fake_ladder(k: int, lr: float, losses: dict[int, dict[int, float]]) -> dict:
    return {(k, r, s, lr): {"k": k, "r": r, "seed": s, "test_loss": v, "best_step": 500, "seconds": 10.0}
            for r, by_seed in losses.items() for s, v in by_seed.items()}


def test_a_unit_summary_reads_r90_from_seed_means_with_the_exact_bias_as_r0(tiny_units, monkeypatch):
    monkeypatch.setattr(du, "bias_alone", lambda k, root: {"validation_loss": 1.0, "test_loss": 1.0})
    found = fake_ladder(4, 1e-3, {1: {0: 0.6, 1: 0.6}, 4: {0: 0.2, 1: 0.2}, 16: {0: 0.1, 1: 0.1}, 64: {0: 0.1, 1: 0.1}})
    unit = du.summary(4, tiny_units, found, 1e-3, (0, 1))
    # g = 0, 4/9, 8/9, 1, 1 at r = 0, 1, 4, 16, 64: 0.9 crossed 1/9 of the way from log2 4 to log2 16
    assert unit["needed_rank"] == pytest.approx(2 ** (2 + 2 * (0.9 - 8 / 9) / (1 / 9)))
    assert unit["interval"] == [pytest.approx(unit["needed_rank"])] * 2  # two identical seeds: no spread
    assert unit["kept"] and unit["relative_gain"] == pytest.approx(0.9) and unit["seconds"] == 80.0
    assert not du.needs_third_seed(unit)
    wide = fake_ladder(4, 1e-3, {1: {0: 0.12, 1: 0.9}, 4: {0: 0.1, 1: 0.8}, 16: {0: 0.1, 1: 0.5}, 64: {0: 0.1, 1: 0.1}})
    assert du.needs_third_seed(du.summary(4, tiny_units, wide, 1e-3, (0, 1)))


def test_finished_runs_are_read_back_from_the_archive_and_new_ones_appended(tmp_path, monkeypatch):
    archive = tmp_path / "runs.jsonl"
    monkeypatch.setattr(dp, "targets", lambda k, root: None)
    monkeypatch.setattr(du, "version", lambda: "v1")
    done = {"run": "dense-k4-r1-s0-lr0.001-v1", "machine": "m", "result": {"test_loss": 0.5}}
    archive.write_text(json.dumps(done) + "\n")
    runs = du.Runs(archive, tmp_path, LocalExecutor(workers=1), train=fake_train)
    found = runs.get([(4, 1, 0, 1e-3), (4, 4, 0, 1e-3)], "test")
    assert found[(4, 1, 0, 1e-3)] == {"test_loss": 0.5} and found[(4, 4, 0, 1e-3)] == {"test_loss": 4.0}
    lines = [json.loads(line) for line in archive.read_text().splitlines()]
    assert [line["run"] for line in lines] == ["dense-k4-r1-s0-lr0.001-v1", "dense-k4-r4-s0-lr0.001-v1"]


def test_a_damaged_archive_line_is_named_with_the_fix(tmp_path):
    archive = tmp_path / "runs.jsonl"
    archive.write_text(json.dumps({"run": "a", "result": {}}) + "\n" + '{"run": "dense-k4-r1' + "\n")
    with pytest.raises(ConfigError) as raised:
        du.Runs(archive, tmp_path, LocalExecutor(workers=1))
    assert str(raised.value) == (f"{archive}, line 2: not a run record ('{{\"run\": \"dense-k4-r1'); remove the line "
                                 "(its run will be trained again).")


def test_runs_train_as_ray_tasks_on_a_local_cluster(tmp_path, monkeypatch):
    """``--executor ray`` reaches the dense units: each missing run is a Ray task, its result archived as locally."""
    ray = pytest.importorskip("ray")
    monkeypatch.setattr(dp, "targets", lambda k, root: None)
    monkeypatch.setattr(du, "version", lambda: "v1")

    def on_a_worker(k, r, seed, lr, root):  # defined here, so Ray ships it by value (the tests are not installed)
        import ray

        return {"test_loss": float(r), "task": ray.get_runtime_context().get_task_id()}  # None outside a Ray task

    try:
        runs = du.Runs(tmp_path / "runs.jsonl", tmp_path, RayExecutor(workers=2), train=on_a_worker)
        found = runs.get([(4, 1, 0, 1e-3), (16, 4, 1, 3e-3)], "ray")
    finally:
        ray.shutdown()
    assert [found[job]["test_loss"] for job in [(4, 1, 0, 1e-3), (16, 4, 1, 3e-3)]] == [1.0, 4.0]
    assert all(result["task"] for result in found.values())  # each trained as a Ray task
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == 2


def fake_train(k, r, seed, lr, root):
    return {"test_loss": float(r)}


def test_the_centred_probe_sees_targets_with_the_probe_texts_mean_change_removed(tiny_units, monkeypatch):
    """Benchmark v2's predictors: the loss the probe differentiates has the bias fitted — over the probe's texts the
    targets' mean change from the base model is 0 (it is not, uncentred), the per-text changes otherwise kept."""
    from loralab.analysis import rank_predictors as rp
    from loralab.experiments import dense_probe

    monkeypatch.setattr(dense_probe, "EXAMPLES", 32)
    seen, real = [], rp.gradient_moment

    def recording(loss, modules, batches, *rest):
        seen.append(torch.cat([b["labels"] for b in batches]))
        return real(loss, modules, batches, *rest)

    monkeypatch.setattr(rp, "gradient_moment", recording)
    found = dp.targets(2, tiny_units)
    base, wanted = found["base_train"][:32], found["train"][:32]
    dense_probe.probe(2, tiny_units, centred=True)
    centred = seen[0]
    assert (centred - base).mean(0).abs().max() < 1e-4 * (wanted - base).mean(0).abs().max()
    assert (wanted - base).mean(0).abs().max() > 0
    assert torch.allclose((centred - base) - (wanted - base), -(wanted - base).mean(0).expand(32, -1), atol=1e-7)
    cached = dense_probe.unit_predictors(2, tiny_units, home=tiny_units / "predictors")
    assert (tiny_units / "predictors" / "dense-k2.json").exists() and cached["planted"].endswith("layer.1.attention.self.value")


def test_claim_9s_benchmark_v2_trains_the_dense_units_and_reads_them_with_the_registered_ones(tiny_units, monkeypatch):
    """The wiring on the tiny BERT (planted k ∈ {2, 3}, rungs 1 and 2, one seed): predictors before ladders, the
    ladders archived, v2's report over the registered units (a stand-in rank.json) and the dense ones."""
    from types import SimpleNamespace

    from loralab.experiments import dense_probe
    from loralab.experiments.claims_geometry import benchmark_compute, benchmark_v2

    for name, value in {"KS": (2, 3), "RANKS": (1, 2), "SEEDS": (0,), "GRID_RANK": 1, "EXTENSIONS": 0}.items():
        monkeypatch.setattr(du, name, value)
    choose = du.choose_lrs
    monkeypatch.setattr(du, "choose_lrs", lambda runs: choose(runs, ks=du.KS))  # its default ks is bound at import
    monkeypatch.setattr(dense_probe, "EXAMPLES", 32)
    out = tiny_units / "study"
    (out / "rank" / "predictors").mkdir(parents=True)
    (out / "rank" / "rank.json").write_text(json.dumps({"units": [
        {"name": f"u{i}", "needed_rank": 1.0 + i, "interval": [1.0, 2.0 + i], "kept": True, "seeds": 2} for i in range(3)]}))
    for i in range(3):
        task = {"gradient_effective_rank": 1.0 + i, "gradient_null_rank": 0.0, "activation_rank": 9.0, "twonn_dimension": 3.0}
        (out / "rank" / "predictors" / f"u{i}.json").write_text(json.dumps({"task": task, "layers": {}}))
    ladders, predicted_first = du.run, []

    def run_after_predictors(*args, **kwargs):
        predicted_first.append(all((out / "rank" / "predictors" / f"dense-k{k}.json").exists() for k in (2, 3)))
        return ladders(*args, **kwargs)

    monkeypatch.setattr(du, "run", run_after_predictors)
    report = benchmark_v2(SimpleNamespace(out=out, root=tiny_units / "runs", executor=LocalExecutor(workers=2)))
    assert predicted_first == [True]  # the predictors are fixed before any ladder trains
    assert set(report["units"]) == {"u0", "u1", "u2", "dense-k2", "dense-k3"}
    records = [json.loads(line) for line in (out / "rank" / "dense_runs.jsonl").read_text().splitlines()]
    dense = json.loads((out / "rank" / "dense_units.json").read_text())["units"]
    third = [u for u in dense.values() if u["seeds"] == 2]  # seed 2 where seed 0's r90 had no finite interval
    assert all(u["needed_rank"] is None or u["interval"][0] is None for u in third) or not third
    # per unit: the grid at r = 1 (3 lrs), then r = 2 at the chosen lr; a third seed's two rungs where needed
    assert len(records) == 2 * (3 + 1) + 2 * len(third)
    assert dense["dense-k2"]["mean_test_loss"]["0"] == pytest.approx(du.bias_alone(2, tiny_units / "runs")["test_loss"])
    assert (out / "rank" / "v2.md").exists() and (out / "rank" / "figures" / "v2.png").exists()
    again = benchmark_v2(SimpleNamespace(out=out, root=tiny_units / "runs", executor=None))  # read back, none trained
    assert len((out / "rank" / "dense_runs.jsonl").read_text().splitlines()) == len(records)
    assert again["test"] == report["test"]
    assert report["compute"]["runs"] == len(records) and report["compute"]["run_hours"] == pytest.approx(
        sum(r["result"]["seconds"] for r in records) / 3600)
    v1 = {"runs": 10, "run_hours": 1.5, "workers": 2, "machines": {"Xeon": 10}}
    both = benchmark_compute(v1, report)
    assert both["runs"] == 10 + len(records) and benchmark_compute(v1, None) == v1
    assert both["machines"] == {"Xeon": 10, **{machine: len(records) for machine in {r["machine"] for r in records}}}
