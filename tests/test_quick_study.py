"""The quick study (`loralab study`, `make study`) on a tiny model: four arms, the report, the cache, refusals."""

from __future__ import annotations

import json

import pytest

from loralab import data as datasets
from loralab.cli import main
from loralab.errors import ConfigError
from loralab.experiments.launcher import make_executor
from loralab.experiments.study import claim_verdict, run_study


def test_quick_study_on_a_given_model_and_dataset(tiny, tmp_path, capsys):
    kwargs = dict(out=str(tmp_path / "report"), runs_dir=str(tmp_path / "runs"), max_train=32, epochs=1,
                  model=tiny["model"], data=tiny["data"], executor=make_executor("inline"))
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
    labels = [e["label"] for e in datasets.load(tiny["data"], "test", 0).examples]
    majority = max(labels.count(label) for label in set(labels)) / len(labels)
    assert saved["meta"]["majority_class"] == majority
    assert f"Always answering the most frequent test label scores {majority:.4f}." in report
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


def test_no_verdict_while_full_fine_tuning_is_at_chance():
    """12 test examples, full FT at the majority class's 0.5: LoRA's "100% of full FT" is a ratio of chance
    levels (the quick study said "holds" there); at 1,056 examples 0.82 against 0.5 is a real baseline."""
    def rows(full, lora, fewer=300.0):
        return [{"run": "full", "test_accuracy": full},
                {"run": "lora-qv-r8", "test_accuracy": lora, "accuracy_vs_full": lora / full,
                 "params_fewer_than_full": fewer}]

    small = claim_verdict(rows(0.5, 0.5), {"majority_class": 0.5, "test_examples": 12})
    assert "— inconclusive here**: full fine-tuning's test accuracy 0.5000 is not clearly above always answering " \
           "the majority class (0.5000; one-sided binomial p = 0.61 over 12 test examples)" in small
    assert "— holds here**: 98.8% of full FT's" in claim_verdict(rows(0.82, 0.81), {"majority_class": 0.5,
                                                                                    "test_examples": 1056})
    assert "— does not hold here**" in claim_verdict(rows(0.82, 0.70), {"majority_class": 0.5, "test_examples": 1056})
    # 10 of 12 right against a 0.5 majority: p = 79/4096 = 0.019, a baseline to compare with
    assert "inconclusive" not in claim_verdict(rows(10 / 12, 10 / 12), {"majority_class": 0.5, "test_examples": 12})

