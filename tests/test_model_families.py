"""Models other than BERT and Llama: default targets, the task head, PEFT parity and a run end to end.

Each family is a tiny randomly initialised model built from its transformers config class (nothing is
downloaded); the names asserted are the ones those classes really use.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers as hf

import loralab as ll
from loralab import models
from loralab.adapters.lora import LoraLayer
from loralab.adapters.registry import adapter_configs
from loralab.analysis.probe import pooled_positions
from loralab.cli import main
from loralab.commands.probe import fit_head
from loralab.errors import AdapterError, ConfigError, DataError
from test_training import train_args

VOCAB = 64
SMALL = dict(vocab_size=VOCAB, num_labels=2, pad_token_id=0)


def bert_like(kind: str) -> dict:
    return dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                max_position_embeddings=40, **SMALL) | ({"type_vocab_size": 0} if kind == "deberta" else {})


def decoder() -> dict:
    return dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, **SMALL)


# family: (model class, config, default targets, task head)
FAMILIES = {
    "bert": (hf.BertForSequenceClassification, hf.BertConfig(**bert_like("bert")), ["query", "value"], ["classifier"]),
    "distilbert": (hf.DistilBertForSequenceClassification,
                   hf.DistilBertConfig(dim=16, n_layers=2, n_heads=2, hidden_dim=32, max_position_embeddings=40,
                                       **SMALL),
                   ["q_lin", "v_lin"], ["pre_classifier", "classifier"]),
    "deberta-v2": (hf.DebertaV2ForSequenceClassification, hf.DebertaV2Config(**bert_like("deberta")),
                   ["query_proj", "value_proj"], ["pooler", "classifier"]),
    "mpnet": (hf.MPNetForSequenceClassification, hf.MPNetConfig(**bert_like("mpnet")), ["q", "v"], ["classifier"]),
    "t5": (hf.T5ForSequenceClassification,
           hf.T5Config(d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2, decoder_start_token_id=0,
                       eos_token_id=1, **SMALL),
           ["q", "v"], ["classification_head"]),
    "gpt2": (hf.GPT2ForSequenceClassification, hf.GPT2Config(n_embd=16, n_layer=2, n_head=2, n_positions=40, **SMALL),
             ["c_attn"], ["score"]),
    "llama": (hf.LlamaForSequenceClassification, hf.LlamaConfig(num_key_value_heads=1, **decoder()),
              ["q_proj", "v_proj"], ["score"]),
    "falcon": (hf.FalconForSequenceClassification,
               hf.FalconConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, **SMALL),
               ["query_key_value"], ["score"]),
    "gpt-neox": (hf.GPTNeoXForSequenceClassification, hf.GPTNeoXConfig(**decoder()), ["query_key_value"], ["score"]),
    "phi3": (hf.Phi3ForSequenceClassification, hf.Phi3Config(num_key_value_heads=2, **decoder()),
             ["qkv_proj"], ["score"]),
}


def build(family: str) -> torch.nn.Module:
    cls, config, _, _ = FAMILIES[family]
    torch.manual_seed(0)
    return cls(config).eval()


def batch(family: str) -> dict:
    """Two right-padded rows (the second 3 tokens shorter); T5 rows end with its eos token (id 1)."""
    ids = torch.randint(2, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    ids[1, 6:], mask[1, 6:] = 0, 0
    if family == "t5":
        ids[0, 8], ids[1, 5] = 1, 1
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("family", FAMILIES)
def test_default_targets_and_head(family):
    model = build(family)
    _, _, targets, head = FAMILIES[family]
    assert ll.default_targets(model) == targets
    assert models.head_names(model) == head


def test_unknown_family_is_refused_with_the_fix():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(AdapterError, match=r"none of the attention projections loralab knows \(query/value, "
                                           r"q_proj/v_proj, q_lin/v_lin.*targets= \(CLI: --targets\), e.g. 'all-linear'"):
        ll.default_targets(model)


@pytest.mark.parametrize("family", ["distilbert", "t5", "deberta-v2", "falcon"])
def test_adapter_with_its_head_loads_in_peft_with_equal_outputs(family, tmp_path):
    """LoRA on the default targets of all-linear, the head trained fully: PEFT rebuilds the same model."""
    peft = pytest.importorskip("peft")
    model = build(family)
    cfg = ll.LoraConfig(r=4, alpha=8, targets="all-linear" if family == "t5" else None,  # None: q/v by name
                        modules_to_save=models.head_names(model))
    adapted = ll.inject(model, cfg)
    if family != "t5":
        leaves = FAMILIES[family][2]
        assert adapter_configs(model)["default"].targets == leaves
        assert adapted and {name.rsplit(".", 1)[-1] for name in adapted} == set(leaves)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:  # B ≠ 0 and a head that differs from the base model's
                param.add_(0.3 * torch.randn_like(param))
    heads = models.head_names(model)
    assert not [n for n, m in model.named_modules() if isinstance(m, LoraLayer) and n.split(".")[0] in heads]
    ll.save_adapter(model, tmp_path / "adapter")
    reference = peft.PeftModel.from_pretrained(build(family), tmp_path / "adapter").eval()
    with torch.no_grad():
        ours, theirs = model(**batch(family)).logits, reference(**batch(family)).logits
    assert not torch.allclose(ours, build(family)(**batch(family)).logits, atol=1e-3)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_probe_fits_a_per_token_head_on_the_pooled_token(family):
    """Decoders classify from the last non-padding token: those features through the head give the logits."""
    model = build(family)
    inputs = batch(family)
    assert pooled_positions(model, inputs).tolist() == [8, 5]
    features = []
    hook = model.score.register_forward_hook(lambda m, args, out: features.append(args[0]))
    with torch.no_grad():
        expected = model(**inputs).logits
    hook.remove()
    pooled = features[0][torch.arange(2), pooled_positions(model, inputs)]
    torch.testing.assert_close(model.score(pooled), expected, atol=1e-6, rtol=0)

    labelled = [{**inputs, "labels": torch.tensor([0, 1])}] * 2
    with torch.no_grad():
        before = model(**labelled[0]).loss.item()
    fit_head(model, labelled, steps=50)
    with torch.no_grad():
        assert model(**labelled[0]).loss.item() < 0.5 * before


def test_distilbert_run_trains_its_whole_head_and_evaluates_the_same(tiny, tmp_path, capsys, keep_threads):
    """A local DistilBERT directory with default flags: q_lin/v_lin adapted, pre_classifier + classifier
    trained (both newly initialised), and `loralab eval` of the saved run gives the run's test metrics."""
    tokenizer = hf.AutoTokenizer.from_pretrained(tiny["model"])
    torch.manual_seed(0)
    config = hf.DistilBertConfig(vocab_size=tokenizer.vocab_size, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                 max_position_embeddings=128, dropout=0.0, attention_dropout=0.0)
    hf.DistilBertModel(config).save_pretrained(tmp_path / "model")  # a base checkpoint: no head in it
    tokenizer.save_pretrained(tmp_path / "model")
    args = train_args({**tiny, "model": str(tmp_path / "model")}, tmp_path / "run", "--epochs", "1")
    assert main(args) == 0
    capsys.readouterr()
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    adapter = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert adapter["modules_to_save"] == ["pre_classifier", "classifier"]
    assert sorted({t.rsplit(".", 1)[-1] for t in adapter["target_modules"]}) == ["q_lin", "v_lin"]
    assert main(["eval", str(tmp_path / "run")]) == 0
    evaluated = json.loads(capsys.readouterr().out)["test"]
    assert evaluated["accuracy"] == result["test"]["accuracy"]
    assert evaluated["loss"] == pytest.approx(result["test"]["loss"], abs=1e-5)


def test_a_model_without_a_class_for_the_task_is_refused_before_loading(tiny, tmp_path):
    build("t5").save_pretrained(tmp_path / "t5")
    hf.AutoTokenizer.from_pretrained(tiny["model"]).save_pretrained(tmp_path / "t5")
    with pytest.raises(DataError) as refused:
        models.load(str(tmp_path / "t5"), "causal_lm")
    assert str(refused.value) == (f"model {str(tmp_path / 't5')!r} is a 't5' model, and transformers has no causal-LM "
                                  "class for it: prompt/response data needs a decoder language model, e.g. smollm2.")
    model, _ = models.load(str(tmp_path / "t5"), "classification", num_labels=2)
    assert models.head_names(model) == ["classification_head"]


def test_plot_labels_tell_encoder_and_decoder_blocks_apart():
    from loralab.commands.plots import short_names

    t5 = [f"transformer.{part}.block.0.layer.0.SelfAttention.q" for part in ("encoder", "decoder")]
    t5.append("transformer.decoder.block.0.layer.1.EncDecAttention.q")
    assert short_names(t5) == ["encoder.0.layer.0.SelfAttention.q", "decoder.0.layer.0.SelfAttention.q",
                               "0.layer.1.EncDecAttention.q"]
    bert = [f"bert.encoder.layer.{i}.attention.self.query" for i in (0, 1)]
    assert short_names(bert) == ["0.query", "1.query"]


def test_a_peft_adapter_listing_names_of_several_architectures_loads(tmp_path):
    """PEFT accepts target_modules that name other architectures' layers too, and saves the list as given."""
    peft = pytest.importorskip("peft")
    reference = peft.get_peft_model(build("distilbert"), peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_lin", "v_lin", "q_proj", "v_proj", "query", "value"],
        modules_to_save=["pre_classifier", "classifier"]))
    with torch.no_grad():
        for param in reference.parameters():
            if param.requires_grad:
                param.add_(0.3 * torch.randn_like(param))
    reference.save_pretrained(tmp_path / "adapter")
    assert "q_proj" in json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["target_modules"]
    ours = build("distilbert")
    ll.load_adapter(ours, tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(ours(**batch("distilbert")).logits, reference.eval()(**batch("distilbert")).logits,
                                   atol=1e-5, rtol=0)


def test_probe_refuses_a_misspelt_target_before_fitting(tiny):
    from loralab.commands.probe import ProbeConfig, run_probe

    with pytest.raises(ConfigError, match=r"targets entries \['valeu'\] match no module in this model \(spelt right\?\); "
                                          r"the others match 2, e.g. \['bert.encoder.layer.0.attention.self.query'"):
        run_probe(ProbeConfig(model=tiny["model"], data=tiny["data"], targets="query,valeu", batches=1, batch_size=4,
                              max_length=16))
    layers = run_probe(ProbeConfig(model=tiny["model"], data=tiny["data"], batches=1, batch_size=4, max_length=16))
    assert len(layers["layers"]) == 4  # query and value of both blocks, the default targets
