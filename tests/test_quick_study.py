"""The quick study (`loralab study`, `make study`) on a tiny model: four arms, the report, the cache, refusals."""

from __future__ import annotations

import json

import pytest

from loralab.cli import main
from loralab.errors import ConfigError
from loralab.experiments.study import run_study


def test_quick_study_on_a_given_model_and_dataset(tiny, tmp_path, capsys):
    kwargs = dict(out=str(tmp_path / "report"), runs_dir=str(tmp_path / "runs"), max_train=32, epochs=1,
                  model=tiny["model"], data=tiny["data"])
    rows = {r["run"]: r for r in run_study(**kwargs)}
    assert list(rows) == ["full", "lora-qv-r8", "lora-all-r8", "dora-qv-r8"]
    assert rows["lora-qv-r8"]["targets"] == "attention query/value" and rows["full"]["targets"] == "all"
    full, qv, dora = rows["full"], rows["lora-qv-r8"], rows["dora-qv-r8"]
    # the tiny BERT: 2 layers × (query + value) × r·(in + out) = 2 × 2 × 8 × 64, plus its 32 × 2 + 2 head
    assert qv["trainable_params"] == 2 * 2 * 8 * 64 + 66
    assert dora["trainable_params"] == qv["trainable_params"] + 2 * 2 * 32  # one magnitude per output row
    assert qv["params_fewer_than_full"] == pytest.approx(full["trainable_params"] / qv["trainable_params"])
    saved = json.loads((tmp_path / "report" / "study.json").read_text())
    assert saved["meta"]["model"] == tiny["model"] and saved["meta"]["test_examples"] == 18
    report = (tmp_path / "report" / "study.md").read_text()
    assert "**Claim: LoRA r=8 reaches ≥ 98% of full fine-tuning's accuracy" in report
    assert (tmp_path / "report" / "study.png").stat().st_size > 10_000
    capsys.readouterr()
    assert [r["test_accuracy"] for r in run_study(**kwargs)] == [r["test_accuracy"] for r in rows.values()]
    assert "running" not in capsys.readouterr().out  # every arm read back from its run directory


def test_quick_study_refuses_generation_data_and_full_study_flags(tiny, tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"the quick study compares test accuracy, so it needs a classification "
                                          r"dataset \(text,label\); 'chat-qa' is causal lm data."):
        run_study(out=str(tmp_path), runs_dir=str(tmp_path / "runs"), model=tiny["model"], data="chat-qa")
    assert main(["study", "--full", "--model", tiny["model"], "--epochs", "1"]) == 2
    assert ("--model, --epochs set the quick study; the full study fixes model, data, sizes and seeds per claim"
            in capsys.readouterr().err)
