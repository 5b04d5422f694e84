"""The layer pilot on the tiny BERT: the update planted in the layer asked for (its targets differ from the last
layer's), v2's training function reading them unchanged, its runs archived under their own key."""

import json

import pytest
from safetensors.torch import load_file

from conftest import short_dense_schedule
from loralab.errors import ConfigError
from loralab.experiments import dense_layer_pilot as dlp
from loralab.experiments import dense_pilot as dp
from loralab.experiments import dense_units as du


def test_the_update_goes_in_the_chosen_layer_and_changes_the_targets_from_the_last_layers(tiny_dense):
    from loralab import models

    model, _ = models.load(dp.MODEL, "classification", num_labels=2)
    assert dlp.value_layer(model, 0) == "bert.encoder.layer.0.attention.self.value"
    with pytest.raises(ConfigError) as raised:
        dlp.value_layer(model, 9)
    layers = sum(1 for n, _ in model.named_modules() if n.endswith("attention.self.value"))
    assert str(raised.value) == (f"layer 9: {dp.MODEL} has {layers} attention value projections; choose one of "
                                 f"0–{layers - 1}.")
    early = load_file(str(dlp.plant(2, 0, tiny_dense / "early") / "dense-k2.safetensors"))
    last = dp.targets(2, tiny_dense / "last")
    base = load_file(str(tiny_dense / "early" / "dense-base.safetensors"))
    assert all(base[f"base_{s}"].equal(last[f"base_{s}"]) for s in ("train", "test"))  # one base model
    assert not early["test"].allclose(last["test"]) and not early["test"].allclose(base["base_test"])


def test_the_pilot_trains_v2s_ladder_on_the_planted_targets_and_reads_it_back(tiny_dense, monkeypatch):
    short_dense_schedule(monkeypatch, du)
    monkeypatch.setattr(du, "RANKS", (1, 2))
    monkeypatch.setattr(dlp, "LR", 1e-3)
    paths = {"root": str(tiny_dense / "runs"), "out": str(tiny_dense / "pilot.json"), "archive": str(tiny_dense / "a.jsonl")}
    report = dlp.run(layer=0, ks=(2,), **paths)
    unit = report["units"]["dense-k2@0"]
    assert set(unit["mean_test_loss"]) == {"0", "1", "2"} and unit["bias_alone"] == du.bias_alone(2, tiny_dense / "runs")
    lines = [json.loads(line) for line in (tiny_dense / "a.jsonl").read_text().splitlines()]
    assert sorted(line["run"] for line in lines) == [f"dense-k2-r{r}-s0-lr0.001-{dlp.version()}" for r in (1, 2)]
    assert dlp.version() != du.version()
    assert dlp.run(layer=0, ks=(2,), **paths)["units"] == report["units"]  # read back, nothing trained again
    assert len((tiny_dense / "a.jsonl").read_text().splitlines()) == 2


def test_the_layer_lr_bracket_chooses_as_v2_and_trains_the_ladder_only_at_a_new_lr(tiny_dense, monkeypatch):
    """Layer 0 on the tiny BERT: v2's grid at r = 4 (3e-3's run read back from the layer's archive, as the real scan's
    is), the ladder at 3e-3 always and at the chosen lr only when it differs; a second call trains nothing."""
    from loralab.experiments import dense_layer_lr as dll

    short_dense_schedule(monkeypatch, du)
    monkeypatch.setattr(du, "RANKS", (1, 4))
    archives, root = tiny_dense / "archives", tiny_dense / "runs"
    dlp.run(layer=0, ks=(16,), root=str(root / "dense_layer0"), out=str(tiny_dense / "scan.json"),
            archive=str(archives / "dense_layer0_runs.jsonl"))  # the scan at 3e-3, as committed
    scanned = len((archives / "dense_layer0_runs.jsonl").read_text().splitlines())
    report = dll.run(layers=(0,), root=str(root), out=str(tiny_dense / "lr.json"), archives=str(archives))
    layer = report["layers"]["0"]
    grid = [float(lr) for lr in layer["grid"]]
    assert grid[:3] == list(du.GRID) and layer["chosen"] == min(grid, key=lambda lr: layer["grid"][f"{lr:g}"])
    assert (layer["chosen"] in (grid[0], grid[-1])) == layer["at_edge"]
    new_lr = layer["chosen"] != dlp.LR
    assert set(layer["ladders"]) == {"0.003", f"{layer['chosen']:g}"} and len(layer["ladders"]) == 1 + new_lr
    lines = [json.loads(line)["run"] for line in (archives / "dense_layer0_runs.jsonl").read_text().splitlines()]
    assert len(lines) == scanned + len(grid) - 1 + new_lr * (len(du.RANKS) - 1)  # r = 4 at the chosen lr is a grid run
    assert all(name.endswith(dlp.version()) for name in lines)
    assert dll.run(layers=(0,), root=str(root), out=str(tiny_dense / "lr.json"), archives=str(archives)) == report
    assert len((archives / "dense_layer0_runs.jsonl").read_text().splitlines()) == len(lines)  # read back
