"""Every error a user can hit: the message names the problem and the fix, and nothing changes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import loralab as ll
from conftest import build, inputs, logits, train_step
from loralab import AdapterError


# ----- config -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(r=0), r"LoraConfig.r must be ≥ 1, got 0"),
        (dict(r=-3), r"LoraConfig.r must be ≥ 1, got -3"),
        (dict(r="8"), r"LoraConfig.r must be an int, got str '8'"),
        (dict(r=8.0), r"LoraConfig.r must be an int, got float"),
        (dict(alpha="16"), r"LoraConfig.alpha must be a number in \(0, 1e\+06\], got '16'"),
        (dict(alpha=float("nan")), r"LoraConfig.alpha must be a number in \(0, 1e\+06\], got nan"),
        (dict(alpha=0), r"LoraConfig.alpha must be a number in \(0, 1e\+06\], got 0. The update is scaled by alpha/r"),
        (dict(alpha=-16), r"LoraConfig.alpha must be a number in \(0, 1e\+06\], got -16.*to scale or negate a trained "
                          r"adapter, combine it with a weight instead: loralab compose DIR --weights -1"),
        (dict(alpha_pattern={"value": -2.0}), r"LoraConfig.alpha_pattern\['value'\] must be a number in \(0, 1e\+06\]"),
        (dict(dropout=1.0), r"LoraConfig.dropout must be in \[0, 1\), got 1.0"),
        (dict(targets=[]), r"LoraConfig.targets must be a regex string or a non-empty list"),
        (dict(targets=""), r"LoraConfig.targets is an empty string"),
        (dict(targets="(query"), r"LoraConfig targets '\(query' is not a valid regex"),
        (dict(layers=[-1]), r"LoraConfig.layers must be a list of non-negative ints"),
        (dict(rank_pattern={"query": 0}), r"LoraConfig.rank_pattern\['query'\] must be ≥ 1"),
        (dict(rank_pattern=[("query", 2)]), r"LoraConfig.rank_pattern must be a dict"),
        (dict(dora="yes"), r"LoraConfig.dora must be True or False"),
        (dict(init="lora-ga"), r"LoraConfig.init must be one of \('default', 'gaussian', 'pissa', 'olora'\)"),
        (dict(modules_to_save=[""]), r"LoraConfig.modules_to_save must be a list of module names"),
    ],
)
def test_bad_config(kwargs, message):
    with pytest.raises(AdapterError, match=message):
        ll.LoraConfig(**kwargs)


# ----- injection --------------------------------------------------------------------------------
def unchanged(model, before_state, before_modules):
    assert [type(m).__name__ for m in model.modules()] == before_modules
    after = model.state_dict()
    assert after.keys() == before_state.keys()
    for key, value in before_state.items():
        assert torch.equal(after[key], value), key


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [type(m).__name__ for m in model.modules()]


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(targets=["q_proj"]), r"no module matches targets=\['q_proj'\].*some adaptable modules in this "
                                   r"model: \['bert.embeddings.word_embeddings'"),
        (dict(targets=["embeddings.LayerNorm"]), r"target 'bert.embeddings.LayerNorm' is a LayerNorm, which LoRA does "
                                                 r"not support \(supported: Linear, Conv1D, Embedding\)"),
        (dict(targets=["query", "word_embeddings"], dora=True),
         r"DoRA supports Linear and Conv1D layers; 'bert.embeddings.word_embeddings' is an Embedding"),
    ],
    ids=["no-match", "unsupported-type", "dora-embedding"],
)
def test_bad_targets_refused_before_any_change(kwargs, message):
    model = build("bert")
    state, modules = snapshot(model)
    with pytest.raises(AdapterError, match=message):
        ll.inject(model, ll.LoraConfig(**kwargs))
    unchanged(model, state, modules)


def test_modules_to_save_no_match():
    with pytest.raises(AdapterError, match=r"no module matches modules_to_save=\['head'\]; top-level modules: \['bert'"):
        ll.inject(build("bert"), ll.LoraConfig(targets=["query"], modules_to_save=["head"]))


@pytest.mark.parametrize("name,message", [
    ("a.b", r"adapter name must be a non-empty string without '.', not '__base__'; got 'a.b'"),
    ("__base__", r"adapter name must be .*; got '__base__'"),
    ("", r"adapter name must be .*; got ''"),
    ("copy", r"adapter name 'copy' is a method or attribute of torch's ModuleDict/ParameterDict, which hold the "
             r"adapters' weights; pick another name, e.g. 'copy_adapter'"),
    ("keys", r"adapter name 'keys' is a method or attribute"),
    ("forward", r"adapter name 'forward' is a method or attribute"),
])
def test_bad_adapter_name(name, message):
    """Refused before anything changes (a ModuleDict key like 'copy' used to fail half-way, as a KeyError)."""
    model = build("bert")
    with pytest.raises(AdapterError, match=message):
        ll.inject(model, ll.LoraConfig(targets=["query"]), name=name)
    assert not any(isinstance(m, ll.LoraLayer) for m in model.modules())


def test_duplicate_and_unknown_adapter_names():
    model = build("bert")
    ll.inject(model, ll.LoraConfig(targets=["query"]))
    with pytest.raises(AdapterError, match=r"adapter 'default' already exists; pick another name or "
                                           r"ll.delete_adapter\(model, 'default'\)"):
        ll.inject(model, ll.LoraConfig(targets=["value"]))
    with pytest.raises(AdapterError, match=r"no adapter named 'nope'; adapters on this model: \['default'\]"):
        ll.set_active(model, ["nope"])
    with pytest.raises(AdapterError, match=r"no adapter named 'nope'"):
        ll.delete_adapter(model, "nope")
    with pytest.raises(AdapterError, match=r"no adapter named 'nope'"):
        ll.save_adapter(model, "unused", name="nope")


def test_inject_needs_a_loralab_config():
    with pytest.raises(AdapterError, match=r"inject needs a loralab.LoraConfig, got dict"):
        ll.inject(build("bert"), {"r": 8})


# ----- merge, disable, route --------------------------------------------------------------------
def test_non_finite_merge_refused_and_nothing_changes():
    model = build("bert")
    ll.inject(model, ll.LoraConfig(targets=["query", "value"]))
    last = model.bert.encoder.layer[1].attention.self.value
    with torch.no_grad():
        for _, layer in ll.adapters.registry.lora_layers(model):
            layer.lora_B["default"].fill_(1e-3)
        last.lora_A["default"].fill_(1e30)
        last.lora_B["default"].fill_(1e30)
    state, modules = snapshot(model)
    with pytest.raises(AdapterError, match=r"merging adapter 'default' would make non-finite weights; weights left "
                                           r"unchanged"):
        ll.merge(model)
    unchanged(model, state, modules)
    assert all(not layer.merged for _, layer in ll.adapters.registry.lora_layers(model))


def test_tied_weight_merge_refused():
    model = build("gpt2", tied=True)
    ll.inject(model, ll.LoraConfig(targets=["wte"]))
    with pytest.raises(AdapterError, match=r"transformer.wte.weight is tied to \['lm_head'\]; merging would change "
                                           r"them too"):
        ll.merge(model)


def test_actions_refused_while_merged():
    model = build("bert")
    ll.inject(model, ll.LoraConfig(targets=["query"]))
    ll.inject(model, ll.LoraConfig(targets=["query"]), name="other")
    ll.merge(model)
    fix = r"call ll.unmerge\(model\) first"
    with pytest.raises(AdapterError, match=r"cannot disable adapters while adapters \['other'\] are merged; " + fix):
        with ll.disabled(model):
            pass
    with pytest.raises(AdapterError, match=r"cannot route a mixed batch while .* are merged; " + fix):
        with ll.routing(model, ["default", "other", "__base__"]):
            pass
    with pytest.raises(AdapterError, match=r"cannot change the active adapters while .* are merged; " + fix):
        ll.set_active(model, ["default"])
    with pytest.raises(AdapterError, match=r"cannot delete adapter 'other' while .* are merged; " + fix):
        ll.delete_adapter(model, "other")
    with pytest.raises(AdapterError, match=r"cannot inject while adapters are merged; " + fix):
        ll.inject(model, ll.LoraConfig(targets=["value"]), name="third")


def test_stacked_dora_merge_refused():
    model = build("bert")
    ll.inject(model, ll.LoraConfig(targets=["query"], dora=True))
    ll.inject(model, ll.LoraConfig(targets=["query"]), name="other")
    ll.set_active(model, ["default", "other"])
    with pytest.raises(AdapterError, match=r"merging stacked adapters \['default', 'other'\] with DoRA among them"):
        ll.merge(model)


def test_routing_errors():
    model = build("bert")
    ll.inject(model, ll.LoraConfig(targets=["query"]))
    with pytest.raises(AdapterError, match=r"routing names 2 adapters but the batch has 3 examples; give one adapter "
                                           r"name \(or '__base__'\) per example"):
        with ll.routing(model, ["default", "__base__"]):
            model(input_ids=inputs(batch=3))
    with pytest.raises(AdapterError, match=r"no adapter named 'ghost'"):
        with ll.routing(model, ["ghost"]):
            pass
    with pytest.raises(AdapterError, match=r"routing needs a list with one adapter name"):
        with ll.routing(model, "default"):
            pass


# ----- loading ----------------------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    """A valid adapter directory for the tiny BERT (DoRA + modules_to_save)."""
    model = build("bert")
    ll.inject(model, ll.LoraConfig(r=4, targets=["query", "value"], dora=True, modules_to_save=["classifier"]))
    train_step(model, inputs())
    ll.save_adapter(model, tmp_path)
    return tmp_path


def edit_config(path, **changes):
    config = json.loads((path / "adapter_config.json").read_text())
    config.update(changes)
    (path / "adapter_config.json").write_text(json.dumps(config))


def edit_tensors(path, fn):
    tensors = load_file(str(path / "adapter_model.safetensors"))
    fn(tensors)
    save_file(tensors, str(path / "adapter_model.safetensors"))


Q = "base_model.model.bert.encoder.layer.0.attention.self.query"


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda p: edit_config(p, r=0), r"adapter_config.json: LoraConfig.r must be ≥ 1, got 0"),
        (lambda p: edit_config(p, r="4"), r"adapter_config.json: LoraConfig.r must be an int, got str '4'"),
        (lambda p: edit_config(p, use_dora="true"), r"adapter_config.json: LoraConfig.dora must be True or False"),
        (lambda p: edit_config(p, lora_alpha=-8), r"adapter_config.json: LoraConfig.alpha must be a number in "
                                                  r"\(0, 1e\+06\], got -8.*to scale or negate a trained adapter"),
        (lambda p: edit_config(p, lora_alpha=0), r"adapter_config.json: LoraConfig.alpha must be a number in \(0, 1e\+06\]"),
        (lambda p: edit_config(p, peft_type="IA3"), r"peft_type is 'IA3'; loralab reads LoRA adapters"),
        (lambda p: edit_config(p, lora_bias=True), r"lora_bias=True is not supported by loralab"),
        (lambda p: edit_config(p, bias="all"), r"bias='all' is not supported by loralab; only 'none'"),
        *[(lambda p, init=init: edit_config(p, init_lora_weights=init),
           rf"init_lora_weights='{init}' changed the base weights in a way loralab cannot replay \(from random draws, "
           r"data or quantisation\); convert it to a plain LoRA adapter with PEFT first: peft_model.save_pretrained\(DIR, "
           r"path_initial_model_for_weight_conversion=DIR_OF_THE_UNTRAINED_ADAPTER\)")
          for init in ("pissa_niter_4", "corda", "loftq", "lora_ga")],
        (lambda p: (p / "adapter_config.json").write_text("{\"r\": 4,"),
         r"adapter_config.json is not valid JSON \(.*\); fix or re-save the adapter"),
        (lambda p: (p / "adapter_config.json").write_text("[1, 2]"), r"expected a JSON object, got list"),
        (lambda p: (p / "adapter_config.json").unlink(), r"has no adapter_config.json"),
        (lambda p: edit_tensors(p, lambda t: t.pop(f"{Q}.lora_A.weight")),
         r"bert.encoder.layer.0.attention.self.query has no lora_A; an adapted layer needs both lora_A and lora_B"),
        (lambda p: edit_tensors(p, lambda t: t.pop(f"{Q}.lora_magnitude_vector")),
         r"1 keys the config implies are missing, e.g. \['" + Q + r".lora_magnitude_vector'\]"),
        (lambda p: edit_tensors(p, lambda t: t.update({f"{Q}.lora_C.weight": torch.zeros(2)})),
         r"1 keys match no adapted module of this model, e.g. \['" + Q + r".lora_C.weight'\]; is this adapter for "
         r"another model\?"),
        (lambda p: edit_tensors(p, lambda t: t.update({f"{Q}.lora_A.weight": torch.zeros(4, 17)})),
         Q + r".lora_A.weight has shape \(4, 17\), this model needs \(4, 16\)"),
        (lambda p: edit_tensors(p, lambda t: t[f"{Q}.lora_B.weight"].__setitem__((0, 0), float("nan"))),
         Q + r".lora_B.weight holds non-finite values \(nan/inf\); the adapter is corrupt"),
        (lambda p: edit_tensors(p, lambda t: t["base_model.model.classifier.weight"].fill_(float("inf"))),
         r"classifier.weight holds non-finite values"),
        (lambda p: (p / "adapter_model.safetensors").write_bytes(b"not a safetensors file"),
         r"adapter_model.safetensors is not a readable safetensors file"),
        (lambda p: edit_config(p, target_modules=["q_proj"]), r"no module matches targets=\['q_proj'\]"),
    ],
)
def test_bad_adapter_files_change_nothing(saved, damage, message):
    damage(saved)
    model = build("bert")
    state, modules = snapshot(model)
    with pytest.raises(AdapterError, match=message):
        ll.load_adapter(model, saved)
    unchanged(model, state, modules)
    assert not ll.adapters.registry.adapter_configs(model)


def test_pickle_file_is_refused_never_unpickled(saved):
    weights = saved / "adapter_model.safetensors"
    (saved / "adapter_model.bin").write_bytes(b"\x80\x04 this would be unpickled by torch.load")
    weights.unlink()
    with pytest.raises(AdapterError, match=r"adapter_model.bin is a pickle file, which loralab never loads "
                                           r"\(unpickling can run code\). Convert it once, in an environment you "
                                           r"trust: python -c .*save_file\(torch.load"):
        ll.load_adapter(build("bert"), saved)


def test_missing_directory_and_missing_weights(tmp_path):
    with pytest.raises(AdapterError, match=r"adapter directory '.*nowhere' does not exist"):
        ll.load_adapter(build("bert"), tmp_path / "nowhere")
    with pytest.raises(AdapterError, match=r"has no adapter_model.safetensors; a PEFT adapter directory holds "
                                           r"adapter_config.json and adapter_model.safetensors"):
        ll.load_adapter(build("bert"), tmp_path)


def test_loading_into_the_wrong_model(saved):
    with pytest.raises(AdapterError, match=r"no module matches targets=\['bert.encoder.layer.0.attention.self.query'"):
        ll.load_adapter(build("llama"), saved)


def test_good_file_still_loads_after_the_checks(saved):
    model = build("bert")
    ll.load_adapter(model, saved)
    assert (logits(model, inputs()) - logits(build("bert"), inputs())).abs().max() > 1e-3
