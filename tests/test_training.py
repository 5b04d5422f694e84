"""The training path with real processes: CLI runs, SIGKILL + resume, torchrun DDP, failures.

A tiny BERT (random weights, MiniLM's real tokenizer) saved as a local HF directory and
a small slice of the real movie-review data keep each run to seconds.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from loralab import data as datasets
from loralab.errors import DataError

ENV = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def train_args(tiny: dict, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", tiny["model"], "--data", tiny["data"], "--method", "lora",
            "--epochs", "3", "--batch-size", "8", "--lr", "5e-3", "--max-length", "32", "--threads", "1",
            "--out", str(out), *extra]


def run_cli(args: list[str], check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "loralab", *args], capture_output=True, text=True, env=ENV, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"loralab {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc


def adapter_tensors(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def test_train_writes_result_metrics_and_a_peft_adapter(tiny, tmp_path):
    run_cli(train_args(tiny, tmp_path / "run"))
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["method"] == "lora" and result["steps"] == 3 * 18  # 144 train rows / 8
    assert 0 < result["trainable_params"] < result["total_params"] / 10
    assert set(result["test"]) == {"loss", "accuracy", "macro_f1", "n"}
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines if x.get("split") == "validation"] == [1, 2, 3]
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(tiny["model"])
    model = peft.PeftModel.from_pretrained(base, tmp_path / "run" / "adapter")
    assert "classifier" in model.peft_config["default"].modules_to_save  # (PEFT adds its own SEQ_CLS head names)
    auto = peft.AutoPeftModelForSequenceClassification.from_pretrained(tmp_path / "run" / "adapter")  # task_type SEQ_CLS
    ids = torch.tensor([[101, 2023, 3185, 2001, 2307, 102]])
    with torch.no_grad():
        torch.testing.assert_close(auto.eval()(input_ids=ids).logits, model.eval()(input_ids=ids).logits, atol=1e-6,
                                   rtol=0)
    card = (tmp_path / "run" / "adapter" / "README.md").read_text()
    assert f"base_model: {tiny['model']}" in card and "- test: loss" in card and "AutoPeftModelForSequenceClassification" \
        in card
    evaluated = json.loads(run_cli(["eval", "--run", str(tmp_path / "run")]).stdout)
    assert evaluated["test"]["accuracy"] == pytest.approx(result["test"]["accuracy"], abs=1e-9)


def test_same_seed_same_result(tiny, tmp_path):
    for name in ("a", "b"):
        run_cli(train_args(tiny, tmp_path / name, "--epochs", "1"))
    a, b = adapter_tensors(tmp_path / "a"), adapter_tensors(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_gradient_checkpointing_gives_the_same_adapter(tiny, tmp_path):
    """Bit for bit, with LoRA dropout on (its masks are replayed in the recompute); DID/SAID refuse it."""
    for name, extra in (("plain", ()), ("checkpointed", ("--gradient-checkpointing",))):
        run_cli(train_args(tiny, tmp_path / name, "--epochs", "1", "--dropout", "0.1", *extra))
    a, b = adapter_tensors(tmp_path / "plain"), adapter_tensors(tmp_path / "checkpointed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    result = json.loads((tmp_path / "checkpointed" / "result.json").read_text())
    assert result["config"]["gradient_checkpointing"] is True
    proc = run_cli([*train_args(tiny, tmp_path / "said", "--method", "said", "--gradient-checkpointing")], check=False)
    assert proc.returncode == 2 and ("--gradient-checkpointing works with full, lora and dora, not with --method said"
                                     in proc.stderr)


KILL_SEED = int(os.environ.get("LORALAB_KILL_SEED", "20261123"))


@pytest.mark.parametrize("threads", ["1", "2"])
def test_sigkill_then_resume_is_bit_identical(tiny, tmp_path, threads):
    """Kill -9 at a seeded step (LORALAB_KILL_SEED picks another), resume, and end with exactly the
    uninterrupted run's weights, at one thread and at two. A failure names the seed and step, so it can be rerun."""
    run_cli([*train_args(tiny, tmp_path / "whole", "--checkpoint-every", "1"), "--threads", threads])
    kill_at = random.Random(KILL_SEED).randint(3, 40)  # 54 steps in all
    where = f"(LORALAB_KILL_SEED={KILL_SEED}, kill at step ≥ {kill_at}, {threads} threads)"
    args = [*train_args(tiny, tmp_path / "killed", "--checkpoint-every", "1"), "--threads", threads]
    proc = subprocess.Popen([sys.executable, "-m", "loralab", *args], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "killed" / "checkpoint" / "checkpoint.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads(state.read_text())["step"] >= kill_at:
                break
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, f"the run finished before it could be killed {where}"
    assert not (tmp_path / "killed" / "result.json").exists()
    killed_step = json.loads(state.read_text())["step"]
    run_cli(args + ["--resume"])
    result = json.loads((tmp_path / "killed" / "result.json").read_text())
    assert result["resumed_from_step"] == killed_step
    whole, resumed = adapter_tensors(tmp_path / "whole"), adapter_tensors(tmp_path / "killed")
    assert whole.keys() == resumed.keys()
    for key in whole:
        assert torch.equal(whole[key], resumed[key]), f"{key} {where}"
    assert result["test"] == json.loads((tmp_path / "whole" / "result.json").read_text())["test"]


def test_torchrun_two_processes_match_one(tiny, tmp_path):
    """DDP (gloo, 2 processes × 4 examples) vs 1 process × 8 examples: same weights within atol 1e-5."""
    single = train_args(tiny, tmp_path / "single", "--epochs", "1")
    run_cli(single)
    ddp = train_args(tiny, tmp_path / "ddp", "--epochs", "1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "loralab", *ddp]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "ddp" / "result.json").read_text())
    assert result["world_size"] == 2
    one, two = adapter_tensors(tmp_path / "single"), adapter_tensors(tmp_path / "ddp")
    assert one.keys() == two.keys()
    moved = max(one[k].abs().max().item() for k in one if "lora_B" in k)
    assert moved > 1e-3  # training really moved B away from its zero init
    for key in one:
        torch.testing.assert_close(two[key], one[key], atol=1e-5, rtol=0, msg=key)


def test_non_finite_loss_stops_with_a_clear_message(tiny, tmp_path):
    args = train_args(tiny, tmp_path / "nan", "--lr", "1e30", "--max-grad-norm", "0", "--checkpoint-every", "1",
                      "--warmup", "0")
    proc = run_cli(args, check=False)
    assert proc.returncode == 2
    assert "training loss is nan at step" in proc.stderr
    assert "the last good checkpoint is" in proc.stderr and "resume with --resume" in proc.stderr
    state = json.loads((tmp_path / "nan" / "checkpoint" / "checkpoint.json").read_text())
    tensors = load_file(str(tmp_path / "nan" / "checkpoint" / state["tensor_file"]))
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if k.startswith("param."))


def test_bad_data_files(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("sentence,score\nhello,1\n")
    with pytest.raises(DataError, match=r"bad.csv has columns \['score', 'sentence'\]; it needs text,label"):
        datasets.load(str(bad))
    with pytest.raises(DataError, match=r"is neither a known name .* nor an existing file"):
        datasets.load(str(tmp_path / "missing.csv"))
    odd = tmp_path / "odd.csv"
    odd.write_text("text,label\na,pos\nb,neg\nc,meh\n")
    with pytest.raises(DataError, match=r"odd.csv:4 has unknown label 'meh'; expected one of \['pos', 'neg'\]"):
        datasets.load(str(odd), labels=["pos", "neg"])
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "a", "label": 1}\n{"text": \n')
    with pytest.raises(DataError, match=r"broken.jsonl:2 is not valid JSON"):
        datasets.load(str(broken))


def test_bad_flags_are_reported(tiny, tmp_path):
    proc = run_cli(train_args(tiny, tmp_path / "x", "--method", "qlora"), check=False)
    assert proc.returncode == 2
    assert "--method must be one of ('full', 'head', 'lora', 'dora', 'did', 'said'), got 'qlora'" in proc.stderr
    proc = run_cli(train_args(tiny, tmp_path / "x", "--lr", "0"), check=False)
    assert "--lr must be > 0; try 5e-4 for LoRA or 5e-5 for full fine-tuning" in proc.stderr


def test_group_by_length_is_a_seeded_permutation_of_similar_length_batches(tiny, tmp_path):
    from loralab.tasks.batching import epoch_order

    lengths = [(7 * i) % 53 + 1 for i in range(500)]
    order = epoch_order(500, 3, 1, lengths, 8)
    assert sorted(order) == list(range(500)) and order == epoch_order(500, 3, 1, lengths, 8)
    assert order != epoch_order(500, 3, 2, lengths, 8)  # each epoch its own order
    spread = [max(lengths[k] for k in order[i:i + 8]) - min(lengths[k] for k in order[i:i + 8]) for i in range(0, 496, 8)]
    assert sum(spread) / len(spread) < 3  # random batches of 8 spread over ~40 tokens
    run_cli(train_args(tiny, tmp_path / "g", "--epochs", "1", "--group-by-length"))
    assert json.loads((tmp_path / "g" / "result.json").read_text())["steps"] == 18


def test_predict_reproduces_the_test_accuracy_and_reads_every_input_form(tiny, tmp_path):
    run = tmp_path / "run"
    run_cli(train_args(tiny, run, "--epochs", "1"))
    result = json.loads((run / "result.json").read_text())
    test = datasets.load(tiny["data"], "test", seed=0)
    names = ["negative", "positive"]
    with open(tmp_path / "test.csv", "w", newline="") as handle:  # labels in the file are ignored by predict
        writer = csv.DictWriter(handle, ["text", "label"])
        writer.writeheader()
        writer.writerows({"text": e["text"], "label": "?"} for e in test.examples)
    rows = [json.loads(line) for line in run_cli(["predict", str(run), "--file", str(tmp_path / "test.csv")]).stdout.splitlines()]
    assert [r["text"] for r in rows] == [e["text"] for e in test.examples]
    accuracy = sum(r["label"] == names[e["label"]] for r, e in zip(rows, test.examples)) / len(rows)
    assert accuracy == pytest.approx(result["test"]["accuracy"], abs=1e-12)
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-5 and set(r["probabilities"]) == set(names) for r in rows)

    (tmp_path / "two.txt").write_text(f"{test.examples[0]['text']}\n\n{test.examples[1]['text']}\n")
    from_txt = run_cli(["predict", str(run), "--file", str(tmp_path / "two.txt")]).stdout.splitlines()
    proc = subprocess.run([sys.executable, "-m", "loralab", "predict", "--run", str(run), "--file", "-"], env=ENV,
                          input=(tmp_path / "two.txt").read_text(), capture_output=True, text=True, timeout=300)
    for got in ([json.loads(x) for x in from_txt], [json.loads(x) for x in proc.stdout.splitlines()]):
        assert [(r["text"], r["label"]) for r in got] == [(r["text"], r["label"]) for r in rows[:2]]
        for r, expected in zip(got, rows):  # other batches, other padding: equal up to float rounding
            assert r["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-5)

    for args, message in (
        ([str(run)], "nothing to predict on: give texts (--text), or --file FILE"),
        (["--model", tiny["model"], str(run), "--text", "x"], "give a run directory (RUN) or --model DIR"),
        (["--model", "minilm", "--text", "x"], "model 'minilm' (BertModel) has no trained task head to predict with"),
        ([str(run), "--file", str(tmp_path / "none.txt")], "input file"),
        ([str(run), "--text", "x", "--max-length", "1000"], "--max-length 1000 is more than model"),
    ):
        proc = run_cli(["predict", *args], check=False)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_predict_and_merge_a_model_plus_an_adapter(tiny, tmp_path, capsys):
    """--model M --adapter DIR (e.g. a composed adapter): the same probabilities as the run the adapter came
    from; label names from --labels, else the run's, else LABEL_i; `merge --model --adapter` writes a model that
    predicts the same."""
    from loralab.cli import main

    run, texts = tmp_path / "run", ["a gripping, moving film", "dull and far too long"]
    assert main(train_args(tiny, run, "--epochs", "1")) == 0

    def predict(*args):
        capsys.readouterr()
        assert main(["predict", *args, "--max-length", "32", "--text", texts[0], "--text", texts[1]]) == 0
        return [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    by_run = predict(str(run))
    by_adapter = predict("--model", tiny["model"], "--adapter", str(run / "adapter"), "--labels", "negative,positive")
    assert by_adapter == by_run and by_run[0]["label"] in ("negative", "positive")
    assert predict("--model", tiny["model"], "--adapter", str(run / "adapter")) == by_run  # names from result.json
    shutil.copytree(run / "adapter", tmp_path / "loose")  # away from its run, nothing names the classes
    unnamed = predict("--model", tiny["model"], "--adapter", str(tmp_path / "loose"))
    assert [list(r["probabilities"].values()) for r in unnamed] == [list(r["probabilities"].values()) for r in by_run]
    assert set(unnamed[0]["probabilities"]) == {"LABEL_0", "LABEL_1"}
    assert main(["merge", "--model", tiny["model"], "--adapter", str(run / "adapter"), "--labels", "negative,positive",
                 "--out", str(tmp_path / "merged")]) == 0
    assert predict("--model", str(tmp_path / "merged")) == by_run
    for args, message in (
        (["predict", str(run), "--adapter", str(run / "adapter"), "--text", "x"],
         "RUN predicts with the run's own adapter; --adapter goes with --model."),
        (["predict", str(run), "--labels", "a,b", "--text", "x"],
         "--labels names the classes of an --adapter's head; a run or a merged model has its own."),
        (["predict", "--model", tiny["model"], "--adapter", str(run / "adapter"), "--labels", "a,b,c", "--text", "x"],
         "--labels names 3 labels; the classification head has 2."),
        (["merge", "--model", tiny["model"], "--adapter", str(run / "adapter"), "--out", str(run / "adapter" / "m")],
         f"--out {run / 'adapter' / 'm'} is the adapter directory {run / 'adapter'}, inside it or above it"),
        (["merge", "--model", tiny["model"], "--out", str(tmp_path / "m")], "or --model and --adapter DIR."),
    ):
        capsys.readouterr()
        assert main(args) == 2 and message in capsys.readouterr().err


def test_pissa_run_evaluates_and_loads_in_peft_on_the_original_base(tiny, tmp_path):
    """--init pissa: W keeps the residual while training; the saved adapter says so, and both `loralab eval`
    and PEFT rebuild that residual from the original base (same test loss; equal logits, atol 1e-5)."""
    run = tmp_path / "run"
    run_cli(train_args(tiny, run, "--epochs", "1", "--init", "pissa"))
    result = json.loads((run / "result.json").read_text())
    assert result["lora"]["init"] == "pissa"
    evaluated = json.loads(run_cli(["eval", str(run)]).stdout)
    assert evaluated["test"]["loss"] == pytest.approx(result["test"]["loss"], abs=1e-6)
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForSequenceClassification

    from loralab.runs import load_run

    theirs = peft.PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(tiny["model"]),
                                            run / "adapter").eval()
    ours = load_run(run)[1].eval()
    ids = torch.tensor([[101, 2023, 3185, 2001, 2307, 102]])
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=ids).logits, theirs(input_ids=ids).logits, atol=1e-5, rtol=0)
    for extra, message in ((("--method", "full", "--init", "pissa"), "--init pissa sets up a LoRA/DoRA adapter"),
                           (("--init", "olora", "--analysis-every", "5"), "--analysis-every measures s·B·A")):
        proc = run_cli(train_args(tiny, tmp_path / "refused", *extra), check=False)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_scheduler_shapes_in_the_logged_learning_rate(tiny, tmp_path):
    """--scheduler after a linear warm-up (transformers' schedulers): lr·(1 − p), lr·(1 + cos πp)/2 or lr, p the
    post-warm-up progress; during warm-up lr·t/warmup."""
    import math

    run_cli(train_args(tiny, tmp_path / "lin", "--epochs", "1", "--warmup", "0.2", "--log-every", "1", "--lr", "0.01"))
    lrs = [json.loads(x)["lr"] for x in (tmp_path / "lin" / "metrics.jsonl").read_text().splitlines()
           if json.loads(x).get("type") == "train"]
    warmup = round(0.2 * 18)
    assert lrs == pytest.approx([0.01 * (t / warmup if t < warmup else (18 - t) / (18 - warmup)) for t in range(1, 19)],
                                abs=1e-12)
    run_cli(train_args(tiny, tmp_path / "cos", "--epochs", "1", "--scheduler", "cosine", "--warmup", "0",
                       "--log-every", "1", "--lr", "0.01"))
    lrs = [json.loads(x)["lr"] for x in (tmp_path / "cos" / "metrics.jsonl").read_text().splitlines()
           if json.loads(x).get("type") == "train"]
    assert len(lrs) == 18  # 144 rows / 8; the lr logged after step t is the one for step t + 1
    assert lrs == pytest.approx([0.01 * 0.5 * (1 + math.cos(math.pi * t / 18)) for t in range(1, 19)], abs=1e-12)


def test_eval_of_a_bf16_run_reproduces_its_test_metrics(tiny, tmp_path):
    """`loralab eval` loads and evaluates the model as the run did (bf16 autocast, eager attention)."""
    run_cli(train_args(tiny, tmp_path / "bf16", "--epochs", "1", "--precision", "bf16", "--method", "dora"))
    result = json.loads((tmp_path / "bf16" / "result.json").read_text())
    evaluated = json.loads(run_cli(["eval", str(tmp_path / "bf16")]).stdout)
    assert evaluated["test"] == result["test"] and evaluated["validation"]["loss"] == result["validation"]["loss"]


def test_patience_stops_after_epochs_without_improvement(tiny, tmp_path):
    """The tiny random model's validation accuracy never beats epoch 1's: with --patience 2 the run ends after
    epoch 3 (of 6) and keeps epoch 1's weights."""
    run_cli(train_args(tiny, tmp_path / "p", "--epochs", "6", "--patience", "2"))
    result = json.loads((tmp_path / "p" / "result.json").read_text())
    history = [h["accuracy"] for h in result["history"]]
    assert result["epochs_trained"] == 3 and result["steps"] == 3 * 18 and len(history) == 3
    assert result["best_epoch"] == 1 and max(history[1:]) <= history[0]
    assert result["validation"]["accuracy"] == history[0]
    proc = run_cli(train_args(tiny, tmp_path / "q", "--patience", "-1"), check=False)
    assert proc.returncode == 2 and "--patience must be an integer ≥ 0, got -1" in proc.stderr


def test_yaml_config_with_sections_trains_like_the_same_flags(tiny, tmp_path):
    """`--config run.yaml` (sections as in the README: lora: {r: …}) and the same settings as flags give the same
    adapter bit for bit; a flag given beside the file wins."""
    (tmp_path / "run.yaml").write_text(
        f"model: {tiny['model']}\ndata: {tiny['data']}\nmethod: lora\nepochs: 1\nbatch_size: 8\nlr: 0.005\n"
        "max_length: 32\nthreads: 1\nlora:\n  r: 4\n  alpha: 8\n")
    run_cli(["train", "--config", str(tmp_path / "run.yaml"), "--seed", "3", "--out", str(tmp_path / "yaml")])
    run_cli(train_args(tiny, tmp_path / "flags", "--epochs", "1", "--rank", "4", "--alpha", "8", "--seed", "3"))
    config = json.loads((tmp_path / "yaml" / "config.json").read_text())
    assert config["lora"]["r"] == 4 and config["lora"]["alpha"] == 8.0 and config["seed"] == 3
    one, two = adapter_tensors(tmp_path / "yaml"), adapter_tensors(tmp_path / "flags")
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)


def test_user_validation_and_test_files_are_used_as_given(tiny, tmp_path):
    """--val-data/--test-data: the test split is the file given, row for row (not a re-split of --data), so
    another --seed keeps the same test set."""
    rows = list(csv.DictReader(open(tiny["data"], newline="", encoding="utf-8")))
    val, test = tmp_path / "val.csv", tmp_path / "test.csv"
    for path, part in ((val, rows[:20]), (test, rows[20:37])):
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(part)
    for seed in ("0", "1"):
        run_cli(train_args(tiny, tmp_path / f"s{seed}", "--epochs", "1", "--seed", seed, "--val-data", str(val),
                           "--test-data", str(test)))
        result = json.loads((tmp_path / f"s{seed}" / "result.json").read_text())
        assert result["test"]["n"] == 17
    given = [datasets.load_splits(tiny["data"], seed, None, None, str(val), str(test))["test"].examples
             for seed in (0, 1)]
    assert given[0] == given[1] and [e["text"] for e in given[0]] == [r["text"] for r in rows[20:37]]


def test_report_to_tensorboard_writes_the_logged_scalars(tiny, tmp_path):
    """--report-to tensorboard: TensorBoard's own event files under <out>/tensorboard with the training loss and
    the test metrics, read back with TensorBoard's reader."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_cli(train_args(tiny, tmp_path / "tb", "--epochs", "1", "--report-to", "tensorboard"))
    events = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss", "train/lr", "test/accuracy", "test/loss"} <= set(tags)
    logged = [json.loads(line) for line in (tmp_path / "tb" / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["loss"] for r in logged if r["type"] == "train"]
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(train_losses, rel=1e-6)
    test = json.loads((tmp_path / "tb" / "result.json").read_text())["test"]
    assert events.Scalars("test/accuracy")[-1].value == pytest.approx(test["accuracy"], rel=1e-6)
