"""The dense-target planted pilot (`experiments.dense_pilot`): the teacher is reachable at rank k, a run learns and
keeps its best checkpoint, batches cover the epoch, the lr grid is extended past an edge, the verdict."""

import random

import pytest
import torch

from conftest import short_dense_schedule
from loralab.experiments import dense_pilot as dp
from loralab.experiments import lm_pilot


@pytest.fixture
def tiny_pilot(tiny_dense, monkeypatch):
    """The pilot on the tiny BERT (`conftest.tiny_dense`), 40–60 steps, validation every 20."""
    short_dense_schedule(monkeypatch, dp)
    return tiny_dense


def test_the_rank_k_teacher_is_a_rank_k_lora_of_the_student(tiny_pilot):
    """LoRA r = k on the planted layer with B·A·s = ΔW (from ΔW's SVD) reproduces the teacher's features (atol 1e-5):
    the target is reachable at rank k, as the design needs; the base model is not: its MSE is ≥ 10⁴ times larger."""
    import loralab as ll
    from loralab import models

    k = 2
    found = dp.targets(k, tiny_pilot)
    assert set(found) == {"train", "validation", "test", "base_train", "base_validation", "base_test"}
    base = dp.base_losses(k, tiny_pilot)["test"]
    assert base > 1e-8
    torch.manual_seed(0)
    model, tokenizer = models.load(dp.MODEL, "classification", num_labels=2)
    layer = dp.planted_layer(model)
    delta = (model.get_submodule(layer).weight.detach().clone(), torch.Generator().manual_seed(3000 + k))
    update = dp.rank_units.planted_update(delta[0], k, dp.rank_units.PLANTED_STRENGTH, delta[1])
    u, s, vh = torch.linalg.svd(update.double())
    encoder = getattr(model, model.base_model_prefix)
    ll.inject(encoder, ll.LoraConfig(r=k, alpha=float(k), targets=[layer.split(".", 1)[1]]))  # s = 1
    lora = encoder.get_submodule(layer.split(".", 1)[1])
    with torch.no_grad():  # the test's own freshly injected adapter
        lora.lora_A["default"].copy_(vh[:k].float())
        lora.lora_B["default"].copy_((u[:, :k] * s[:k]).float())
    model.eval()
    assert dp.mse(encoder, tokenizer, dp.splits()["test"], found["test"]) < 1e-4 * base
    assert torch.allclose(dp.features_of(encoder, tokenizer, dp.splits()["test"]), found["test"], atol=1e-6)


def test_a_run_learns_the_teacher_and_keeps_its_best_checkpoint(tiny_pilot):
    result = dp.train_rung(2, 4, 1e-2, str(tiny_pilot))
    assert result["test_loss"] < 0.5 * dp.base_losses(2, tiny_pilot)["test"]
    assert [step for step, _ in result["curve"]] == [20, 40, 60]
    assert result["validation_loss"] == min(loss for _, loss in result["curve"])
    assert (result["steps"], result["stopped"]) in {(60, "step cap"), (60, "patience")}


def test_length_batches_cover_the_epoch_once_sorted_within_windows():
    lengths = [random.Random(1).randint(3, 40) for _ in range(1000)]
    batches = dp.length_batches(lengths, random.Random(0))
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert sorted(map(len, batches)) == [8] + [dp.BATCH] * 62  # windows of 800 and 200: one batch of 8
    assert all([lengths[i] for i in b] == sorted(lengths[i] for i in b) for b in batches)


class FakeRuns:
    """Validation MSE = (log10 lr − log10 best)², the best lr per unit given; every requested job recorded."""

    def __init__(self, best: dict[int, float]):
        self.best, self.asked = best, []

    def get(self, jobs, desc):
        import math

        self.asked.append(sorted(jobs))
        return {job: {"validation_loss": (math.log10(job[2]) - math.log10(self.best[job[0]])) ** 2} for job in jobs}


def test_the_lr_grid_is_extended_past_an_edge_at_most_twice():
    runs = FakeRuns({4: 1e-3, 32: 1e-2})
    chosen = dp.choose_lrs(runs)
    assert chosen[4][0] == 1e-3 and set(chosen[4][1]) == {3e-4, 1e-3, 3e-3}
    assert chosen[32][0] == 9e-3 and set(chosen[32][1]) == {3e-4, 1e-3, 3e-3, 9e-3, 2.7e-2}
    assert len(runs.asked) == 3 and runs.asked[1] == [(32, 8, lr) for lr in (3e-4, 1e-3, 3e-3, 9e-3)]  # k = 4 done
    far = dp.choose_lrs(FakeRuns({4: 1.0, 32: 1e-6}))
    assert far[4][0] == 2.7e-2 and far[32][0] == pytest.approx(3.33e-5)  # an edge still, after two extensions


def test_the_verdict_needs_high_rank_on_k32_and_low_rank_on_k4():
    k4 = lm_pilot.summary({0: 1.0, 1: 0.5, 2: 0.2, 4: 0.1, 8: 0.1, 64: 0.1})
    k32 = lm_pilot.summary({0: 1.0, 1: 0.9, 8: 0.6, 16: 0.4, 32: 0.1, 64: 0.1})
    assert dp.verdict({4: k4, 32: k32}) == "rank-sensitive"
    assert dp.verdict({4: k32, 32: k32}) == "not rank-sensitive"
    assert dp.verdict({4: k4, 32: k4}) == "not rank-sensitive"


def test_the_probe_scores_every_query_and_value_layer_against_the_planted_truth(tiny_pilot, monkeypatch):
    """On 32 texts of the tiny BERT (rank 2 planted in layer 1's value): 4 layers probed, the truth 2 on the planted
    one, every predictor computed there."""
    from loralab.experiments import dense_probe

    monkeypatch.setattr(dense_probe, "EXAMPLES", 32)
    found = dense_probe.probe(2, tiny_pilot)
    assert found["planted"] == "bert.encoder.layer.1.attention.self.value"
    assert found["truth"] == {f"bert.encoder.layer.{i}.attention.self.{kind}": 2 if (i, kind) == (1, "value") else 0
                              for i in (0, 1) for kind in ("query", "value")}
    planted = found["layers"][found["planted"]]
    assert planted["gradient_null_rank"] >= 0 and 1 <= planted["gradient_effective_rank"] <= 32
    energy = found["energy"]["planted_layer"]  # ΔW·Σ_h·ΔWᵀ of a rank-2 ΔW: two eigenvalues, then zeros
    assert energy["r90"] <= 2 and energy["top"][2] < 1e-9 * energy["top"][0] and 1 <= energy["effective_rank"] <= 2
    assert set(found["task"]) == {"gradient_effective_rank", "gradient_null_rank", "activation_rank", "twonn_dimension",
                                  "gradient_importance"}


def test_the_null_moves_each_text_by_another_texts_planted_change():
    """t'(x) = f₀(x) + (t − f₀)(x′): base outputs kept in place, the changes permuted across batches (none lost)."""
    from loralab.experiments import dense_probe

    base, change = torch.randn(10, 3), torch.randn(10, 3)
    batches = [{"labels": (base + change)[:4]}, {"labels": (base + change)[4:]}]
    null = torch.cat([b["labels"] for b in dense_probe.shuffled_changes(batches, base, seed=1)])
    moved = null - base
    order = [min(range(10), key=lambda j: float((moved[i] - change[j]).abs().max())) for i in range(10)]
    assert sorted(order) == list(range(10)) and torch.allclose(moved, change[order], atol=1e-6)
    assert not torch.allclose(moved, change)


def test_energy_ranks_of_a_known_spectrum():
    from loralab.experiments import dense_probe

    found = dense_probe.energy_ranks(torch.tensor([1.0, 4.0, 0.0, 5.0]))  # 5, 4, 1: 50% at 1, 90% at 2
    assert (found["r50"], found["r90"]) == (1, 2) and found["top"] == [5.0, 4.0, 1.0, 0.0]
    assert dense_probe.energy_ranks(torch.ones(6))["effective_rank"] == pytest.approx(6.0)


def test_the_centred_reading_measures_gain_from_the_shifted_base(tiny_pilot):
    """L_0' is the test change's MSE after removing the training texts' mean change; a rung at L_0' has g = 0."""
    from loralab.experiments import dense_probe

    found = dp.targets(2, tiny_pilot)
    shift = (found["train"] - found["base_train"]).double().mean(0)
    centred = float((((found["test"] - found["base_test"]).double() - shift) ** 2).mean())
    reading = dense_probe.centred_gain(2, tiny_pilot, {"0": 9.0, "1": centred, "2": centred / 2, "4": centred / 4})
    assert reading["centred_l0"] == pytest.approx(centred)
    assert reading["g"][1] == pytest.approx(0.0) and reading["g"][2] == pytest.approx(2 / 3) and reading["g"][4] == 1
    assert 0 < reading["shift_share"] < 1


def test_pilot3_bias_alone_learns_the_shift_and_the_lr_decays_to_zero(tiny_pilot, monkeypatch):
    """r = 0 trains only the output bias and lowers the untrained MSE; the schedule warms up, then reaches 0 at the
    cap."""
    from loralab.experiments import dense_pilot3 as p3

    short_dense_schedule(monkeypatch, p3)
    assert [p3.lr_factor(s) for s in (0, 4, 32, 59, 60)] == pytest.approx([0.2, 1.0, 28 / 55, 1 / 55, 0.0])
    result = p3.train_rung(2, 0, str(tiny_pilot))
    assert result["test_loss"] < dp.base_losses(2, tiny_pilot)["test"]
    assert [step for step, _ in result["curve"]] == [20, 40, 60]
    lora = p3.train_rung(2, 2, str(tiny_pilot))
    assert lora["validation_loss"] == min(loss for _, loss in lora["curve"])
