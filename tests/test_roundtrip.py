"""Table-driven: every tiny model × adapter config goes through the whole adapter life cycle.

After one real optimizer step (so B ≠ 0), the adapted, merged, unmerged, saved-and-reloaded
and merge_and_unload outputs agree (atol 1e-5), all differ from the base, the disabled
model equals the base, and unmerge restores the base weights.
"""

from __future__ import annotations

import pytest
import torch

import loralab as ll
from conftest import build, inputs, logits, train_step

ATOL = 1e-5

TARGETS = {
    "bert": (["query", "value"], ["word_embeddings", "key"], "classifier"),
    "gpt2": (["c_attn"], ["wte", "c_fc"], None),
    "llama": (["q_proj", "v_proj"], ["embed_tokens", "up_proj"], "lm_head"),
}

CONFIGS = {
    "lora": lambda t: dict(targets=t[0]),
    "rslora-dropout": lambda t: dict(targets=t[0], rslora=True, dropout=0.1),
    "dora": lambda t: dict(targets=t[0], dora=True),
    "embedding": lambda t: dict(targets=t[1]),
    "all-linear": lambda t: dict(targets="all-linear"),
    "gaussian-layer1": lambda t: dict(targets=t[0], init="gaussian", layers=[1]),
    "pissa": lambda t: dict(targets=t[0], init="pissa"),
    "pissa-dora": lambda t: dict(targets=t[0], init="pissa", dora=True),
    "olora": lambda t: dict(targets=t[0], init="olora"),
    "modules-to-save": lambda t: dict(targets=t[0], modules_to_save=[t[2]] if t[2] else []),
}

ROWS = [(arch, cfg) for arch in TARGETS for cfg in CONFIGS if (arch, cfg) != ("gpt2", "olora")]  # OLoRA: Linear only


def base_weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora" not in n and "modules_to_save" not in n}


@pytest.mark.parametrize("arch,config", ROWS, ids=[f"{a}-{c}" for a, c in ROWS])
def test_adapter_life_cycle(arch, config, tmp_path):
    ids = inputs()
    model = build(arch)
    base = logits(model, ids)
    cfg = ll.LoraConfig(r=4, alpha=8, **CONFIGS[config](TARGETS[arch]))
    names = ll.inject(model, cfg)
    assert names and all(isinstance(model.get_submodule(n), ll.LoraLayer) for n in names)
    residual = cfg.init in ("pissa", "olora")
    if residual:
        torch.testing.assert_close(logits(model, ids), base, atol=ATOL, rtol=0)  # PiSSA / OLoRA init is exact
    before = base_weights(model)

    train_step(model, ids)
    adapted = logits(model, ids)
    assert (adapted - base).abs().max() > 1e-3

    with ll.disabled(model):
        disabled_out = logits(model, ids)
    if not residual:  # PiSSA's / OLoRA's base is the residual W − s·B₀·A₀, not W
        torch.testing.assert_close(disabled_out, base, atol=ATOL, rtol=0)

    ll.merge(model)
    merged = logits(model, ids)
    ll.merge(model)  # idempotent
    torch.testing.assert_close(logits(model, ids), merged, atol=0, rtol=0)
    torch.testing.assert_close(merged, adapted, atol=ATOL, rtol=0)
    ll.unmerge(model)
    torch.testing.assert_close(logits(model, ids), adapted, atol=ATOL, rtol=0)
    for name, value in base_weights(model).items():
        torch.testing.assert_close(value, before[name], atol=1e-6, rtol=0, msg=name)

    ll.save_adapter(model, tmp_path)
    fresh = build(arch)  # the original base: loading replays PiSSA's / OLoRA's residual, as PEFT does
    ll.load_adapter(fresh, tmp_path)
    torch.testing.assert_close(logits(fresh, ids), adapted, atol=ATOL, rtol=0)

    plain = ll.merge_and_unload(model)
    assert not any(isinstance(m, (ll.LoraLayer, ll.ModulesToSave)) for m in plain.modules())
    torch.testing.assert_close(logits(plain, ids), adapted, atol=ATOL, rtol=0)


@pytest.mark.parametrize("wrap", ["compile", "data_parallel"])
def test_wrapped_models_work_as_the_model_inside(wrap, tmp_path):
    """torch.compile's OptimizedModule and (Distributed)DataParallel prefix every module name
    (``_orig_mod.``, ``module.``) and hold none of loralab's state: the API unwraps them."""
    plain, inner = build("bert"), build("bert")
    wrapped = torch.compile(inner) if wrap == "compile" else torch.nn.DataParallel(inner)
    cfg = ll.LoraConfig(r=4, alpha=8, init="gaussian", modules_to_save=["classifier"])
    assert ll.inject(wrapped, cfg) == ll.inject(plain, cfg) == [
        f"bert.encoder.layer.{i}.attention.self.{p}" for i in (0, 1) for p in ("query", "value")]
    train_step(inner, inputs())
    ll.save_adapter(wrapped, tmp_path / "a")
    assert ll.adapter_state_dict(wrapped, "default").keys() == ll.adapter_state_dict(plain, "default").keys()
    ll.load_adapter(plain, tmp_path / "a", name="saved")
    torch.testing.assert_close(logits(plain, inputs()), logits(inner, inputs()), atol=ATOL, rtol=0)
    ll.set_active(wrapped, [])
    assert ll.active_adapters(wrapped) == [] and ll.active_adapters(inner) == []
    ll.set_active(wrapped, ["default"])
    ll.merge(wrapped)
    assert ll.merge_and_unload(wrapped) is inner and not any(isinstance(m, ll.LoraLayer) for m in inner.modules())
