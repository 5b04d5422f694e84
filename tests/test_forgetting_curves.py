"""Claim 8's measurement: the cipher target, per-text forgetting that adds up, and forgetting read off
learning–forgetting curves at a matched gain (Biderman et al. 2024)."""

from __future__ import annotations

import json

import pytest
import torch

from loralab.experiments import forgetting_runs as fr


def test_the_cipher_is_a_fixed_derangement_that_keeps_case_and_other_characters():
    table = fr.cipher()
    assert table == fr.cipher() and sorted(table[c] for c in "abcdefghijklmnopqrstuvwxyz") == list(
        "abcdefghijklmnopqrstuvwxyz")
    assert all(table[c] != c for c in "abcdefghijklmnopqrstuvwxyz")
    text = "Hello, World 42!"
    coded = fr.encipher(text, table)
    assert len(coded) == len(text) and coded[5:7] == ", " and coded[-3:] == "42!" and coded[0].isupper()
    inverse = {v: k for k, v in table.items()}
    assert fr.encipher(coded, inverse) == text


def test_cipher_files_are_chat_qa_splits_with_responses_enciphered(tmp_path):
    from loralab import data as datasets

    train, val, test = fr.cipher_files(tmp_path)
    rows = [json.loads(line) for line in open(test)]
    plain = datasets.load("chat-qa", "test", 0).examples
    assert [r["prompt"] for r in rows] == [e["prompt"] for e in plain]
    assert [r["response"] for r in rows] == [fr.encipher(e["response"], fr.cipher()) for e in plain]
    assert len(datasets.load_splits(train, 0, None, None, val, test)["test"].examples) == len(plain)


def points(curves: dict) -> list[dict]:
    """{(arm, seed): [(gain, forgetting), ...]} as `smollm2_forgetting`'s points, each with 4 reference texts
    whose per-text increases average to the point's forgetting."""
    out = []
    for (arm, seed), curve in curves.items():
        for gain, forgetting in curve:
            per_text = {"tokens": [10, 10, 20, 20], "loss_increase": [10 * forgetting * k for k in (0.5, 1.5, 1, 1)]}
            out.append({"arm": arm, "seed": seed, "gain": gain, "forgetting": forgetting, "per_text": per_text})
    return out


def test_forgetting_is_read_off_each_curve_at_the_gain_every_arm_reaches():
    found = points({("full", 0): [(0.5, 0.2), (1.0, 0.4), (2.0, 0.8)], ("full", 1): [(0.4, 0.1), (1.5, 0.5)],
                    ("lora-r8", 0): [(0.2, 0.0), (0.8, 0.1), (1.2, 0.2)], ("lora-r8", 1): [(0.3, 0.05), (1.1, 0.15)]})
    assert fr.matched_gain(found) == 1.1  # the weakest curve's highest gain
    assert fr.curve_at([(0.5, 0.2), (1.0, 0.4), (2.0, 0.8)], 1.1) == pytest.approx(0.44)
    assert fr.curve_at([(0.5, 0.2), (1.0, 0.4)], 1.1) is None  # never extrapolated
    full = (0.44 + (0.1 + 0.4 * (1.1 - 0.4) / 1.1)) / 2
    lora = (0.2 - 0.1 * 0.1 / 0.4 + 0.15) / 2
    assert fr.arm_at(found, "full", 1.1) == pytest.approx(full) and fr.arm_at(found, "lora-r8", 1.1) == pytest.approx(lora)
    compared = fr.matched_difference(found, "full", "lora-r8", 1.1)
    assert compared["difference"] == pytest.approx(full - lora)
    assert compared["low"] <= compared["difference"] <= compared["high"] and compared["high"] > compared["low"]
    assert set(compared["per_seed"]) == {0, 1}


def test_curves_that_do_not_overlap_are_not_matched():
    found = points({("full", 0): [(2.0, 0.5), (3.0, 0.9)], ("lora-r8", 0): [(0.1, 0.0), (0.5, 0.1)]})
    assert fr.matched_gain(found) is None
    assert fr.matched_difference(found, "full", "lora-r8", None)["difference"] is None


def test_per_text_forgetting_adds_up_to_the_totals():
    """`lm_forgetting(per_text=True)`: each text's summed loss increase over its tokens, which the totals equal."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from loralab.analysis.forgetting import lm_forgetting

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, max_position_embeddings=64)
    base, tuned = LlamaForCausalLM(config).eval(), LlamaForCausalLM(config).eval()
    rows = [{"input_ids": ids, "labels": list(ids)} for ids in
            ([1, 5, 7, 9, 11], [2, 4, 6], [3, 8, 12, 14, 16, 18, 20], [30, 31])]
    found = lm_forgetting(base, tuned, rows, pad_id=0, batch_size=3, per_text=True)
    per = found["per_text"]
    assert per["tokens"] == [4, 2, 6, 1] and sum(per["tokens"]) == found["tokens"]
    assert sum(per["loss_increase"]) / found["tokens"] == pytest.approx(found["loss_increase"], abs=1e-10)
    with torch.no_grad():
        ids = torch.tensor([rows[2]["input_ids"]])
        alone = float(tuned(input_ids=ids, labels=ids).loss - base(input_ids=ids, labels=ids).loss)
    assert per["loss_increase"][2] / 6 == pytest.approx(alone, abs=1e-5)
    assert "per_text" not in lm_forgetting(base, tuned, rows, pad_id=0)


def test_a_runs_forgetting_is_computed_once_per_reference_set(tmp_path, monkeypatch):
    """`cached_forgetting` keeps the result in the run's directory, keyed by the reference texts' token ids: a
    second read returns it without computing; other reference texts compute again."""
    computed = []

    def measure(run_dir, base, rows, pad_id):
        computed.append(len(rows))
        return {"loss_increase": 0.125 * len(rows), "kl_base_tuned": 0.1, "per_text": {"tokens": [3] * len(rows)}}

    monkeypatch.setattr(fr, "forgetting_of", measure)
    rows = [{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}, {"input_ids": [4, 5], "labels": [4, 5]}]
    first = fr.cached_forgetting(tmp_path, None, rows, 0)
    assert fr.cached_forgetting(tmp_path, None, rows, 0) == first == measure(None, None, rows, 0)
    assert computed == [2, 2]  # once by the cache, once by the comparison above
    assert fr.cached_forgetting(tmp_path, None, rows[:1], 0)["loss_increase"] == 0.125 and computed == [2, 2, 1]
    assert len(list(tmp_path.glob("forgetting-bbc-*.json"))) == 2
