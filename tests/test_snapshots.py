"""Snapshots along training (`loralab train --snapshot-steps`): the parameters after chosen steps, kept, loaded
back onto the run's model, and asked for by experiment units without changing what a run computes."""

from __future__ import annotations

import pytest
import torch

from loralab.cli import main
from loralab.errors import ConfigError
from loralab.runs import load_snapshot
from loralab.train.snapshots import parse_steps, snapshot_path


def trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


@pytest.fixture
def snapshot_run(tiny, tmp_path):
    """A LoRA run of 3 steps on the tiny BERT, validated once (at step 3, so its best weights are its last), keeping
    steps 1 and 3."""
    out = tmp_path / "run"
    code = main(["train", "--model", tiny["model"], "--data", tiny["data"], "--method", "lora", "--max-train", "24",
                 "--max-eval", "16", "--max-length", "32", "--batch-size", "8", "--max-steps", "3", "--eval-steps",
                 "3", "--min-steps", "3", "--lr", "1e-2", "--out", str(out), "--snapshot-steps", "3,1"])
    assert code == 0
    return out


def test_a_snapshot_is_the_run_after_that_step(snapshot_run):
    from loralab.runs import load_run

    assert sorted(p.name for p in snapshot_path(snapshot_run, 1).parent.iterdir()) == [
        "step-1.safetensors", "step-3.safetensors"]
    end = trainable(load_run(snapshot_run)[1])
    last, first = trainable(load_snapshot(snapshot_run, 3)[1]), trainable(load_snapshot(snapshot_run, 1)[1])
    assert end and last.keys() == end.keys() == first.keys()
    assert all(torch.equal(last[n], end[n]) for n in end)  # step 3 is where the run ended (its best validation)
    assert any(not torch.equal(first[n], end[n]) for n in end)  # step 1 is two optimizer steps earlier


def test_a_step_that_was_not_kept_is_named_with_those_that_were(snapshot_run):
    with pytest.raises(ConfigError) as err:
        load_snapshot(snapshot_run, 2)
    assert str(err.value) == (f"{snapshot_run} has no snapshot of step 2 (kept: [1, 3]); train with "
                              "--snapshot-steps 2 to keep one.")


@pytest.mark.parametrize("text", ["0,5", "a,b", ""])
def test_snapshot_steps_must_be_positive_integers(text):
    with pytest.raises(ConfigError, match="--snapshot-steps takes optimizer steps"):
        parse_steps(text)
    assert parse_steps("26, 13,13") == (13, 26)


def test_a_unit_that_keeps_snapshots_trains_in_a_directory_of_its_own(tiny, tmp_path):
    """The end-only run stays cached under its own key; the snapshot unit's run is the same training (equal test
    loss: deterministic on CPU) with its snapshot kept."""
    from dataclasses import replace

    from loralab.experiments.launcher import LocalExecutor, Unit, code_version, run_units, unit_dir
    from loralab.train.config import TrainConfig

    cfg = TrainConfig(model=tiny["model"], data=tiny["data"], method="lora", max_train=24, max_eval=16, max_length=32,
                      epochs=1, batch_size=8, lr=1e-2)
    plain, kept = Unit("tiny", cfg), Unit("tiny", replace(cfg), (2,))
    version = code_version()
    assert unit_dir(tmp_path, plain, version) != unit_dir(tmp_path, kept, version)
    ends = run_units([plain], tmp_path, LocalExecutor(1)), run_units([kept], tmp_path, LocalExecutor(1))
    assert ends[0]["tiny"].test["loss"] == ends[1]["tiny"].test["loss"]
    assert snapshot_path(unit_dir(tmp_path, kept, version), 2).is_file()
    assert not snapshot_path(unit_dir(tmp_path, plain, version), 2).parent.exists()
