"""Untrusted adapter files through every command that reads them (issue 35: defects 8, 9, 12, 15): each is refused in
one line naming the file and the problem — `info` and `compose` check what `load_adapter` checks — and a hostile
config cannot hang the loader."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import loralab as ll
from loralab.cli import main

Q = "base_model.model.0"


@pytest.fixture
def adapter(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6))
    ll.inject(model, ll.LoraConfig(r=2, alpha=4, targets=["0"]))
    with torch.no_grad():
        model[0].lora_B["default"].normal_()
    return ll.save_adapter(model, tmp_path / "adapter")


def damage_tensors(path, fn):
    tensors = load_file(str(path / "adapter_model.safetensors"))
    fn(tensors)
    save_file(tensors, str(path / "adapter_model.safetensors"))


def damage_config(path, **changes):
    config = json.loads((path / "adapter_config.json").read_text())
    config.update(changes)
    (path / "adapter_config.json").write_text(json.dumps(config))


DAMAGE = {
    "rank 4 tensors under r=2": (lambda p: damage_tensors(p, lambda t: t.update({
        f"{Q}.lora_A.weight": torch.randn(4, 8), f"{Q}.lora_B.weight": torch.randn(6, 4)})),
        "has lora_A (4, 8) and lora_B (6, 4); rank 2 (the config's) needs A (2, in) and B (out, 2)"),
    "r = 1e9 in the config": (lambda p: damage_config(p, r=10**9),
                              "rank 1000000000 (the config's) needs A (1000000000, in)"),
    "int32 tensor": (lambda p: damage_tensors(p, lambda t: t.update({f"{Q}.lora_A.weight": t[f"{Q}.lora_A.weight"].int()})),
                     "lora_A.weight holds int32 values; adapter weights are float32, float16, bfloat16 or float64"),
    "float8 tensor": (lambda p: damage_tensors(p, lambda t: t.update({
        f"{Q}.lora_B.weight": t[f"{Q}.lora_B.weight"].to(torch.float8_e4m3fn)})), "holds float8_e4m3fn values"),
    "bool tensor": (lambda p: damage_tensors(p, lambda t: t.update({f"{Q}.lora_A.weight": t[f"{Q}.lora_A.weight"] > 0})),
                    "holds bool values"),
    "a 1-D lora_A": (lambda p: damage_tensors(p, lambda t: t.update({f"{Q}.lora_A.weight": torch.randn(16)})),
                     "has lora_A (16,) and lora_B (6, 2)"),
    "NaN": (lambda p: damage_tensors(p, lambda t: t[f"{Q}.lora_B.weight"].fill_(float("nan"))),
            "lora_B.weight holds non-finite values (nan/inf); the adapter is corrupt"),
    "B = 3e38": (lambda p: damage_tensors(p, lambda t: t[f"{Q}.lora_B.weight"].fill_(3e38)),
                 "lora_B.weight holds values up to 3e+38, far beyond any trained weight"),
    "lora_alpha 1e308": (lambda p: damage_config(p, lora_alpha=1e308), "LoraConfig.alpha must be a number in (0, 1e+06]"),
    "a nested-repeat target regex": (lambda p: damage_config(p, target_modules="(.*.*)*z"),
                                     "repeats a group that itself repeats (like (a*)*), which can take exponential time"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
@pytest.mark.parametrize("command", ["info", "compose", "load"])
def test_a_damaged_adapter_is_refused_by_every_reader(adapter, tmp_path, capsys, case, command):
    damage, message = DAMAGE[case]
    damage(adapter)
    if command == "load":
        with pytest.raises(ll.AdapterError, match=None) as err:
            ll.load_adapter(nn.Sequential(nn.Linear(8, 6)), adapter)
        assert message in str(err.value)
        return
    args = ["info", str(adapter)] if command == "info" else \
        ["compose", str(adapter), "--method", "cat", "--out", str(tmp_path / "combo")]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "combo").exists()


def test_a_huge_exact_rank_pattern_is_matched_by_lookup():
    """50,000 exact-module keys (what `exact_pattern` writes) took 3 min 9 s to match; literal keys are now looked up
    by the module name's dotted suffixes, and first-match order still holds among regex and literal keys."""
    from loralab.adapters.config import exact_pattern

    cfg = ll.LoraConfig(rank_pattern={**exact_pattern({f"m.layer.{i}.q": 2 for i in range(50_000)}), r"layer\.\d+\.k": 5})
    assert cfg.rank_for("m.layer.49999.q") == 2 and cfg.rank_for("x.m.layer.7.q") == 2 and cfg.rank_for("m.layer.7.k") == 5
    assert cfg.rank_for("m.layer.7.v") == 8
    first = ll.LoraConfig(rank_pattern={r"layer\.\d+\.q": 3, "m.layer.1.q": 4})
    assert first.rank_for("m.layer.1.q") == 3  # the first key that matches wins, as in PEFT
    with pytest.raises(ll.AdapterError, match="has 1,001 regex keys"):
        ll.LoraConfig(rank_pattern={rf"l{i}\..*q": 2 for i in range(1001)})
