"""What a new user tripped on (issue 34), each as the command they typed: refusals that name the fix, nothing
silent, nothing kept that is not asked for."""

from __future__ import annotations

import io
import json

import pytest

from test_run_safety import quick, run

pytestmark = pytest.mark.usefixtures("keep_threads")


@pytest.fixture(scope="module")
def full_run(tiny, tmp_path_factory):
    """A finished one-epoch full fine-tuning run that keeps no checkpoint (--save-total-limit 0)."""
    from loralab.cli import main

    out = tmp_path_factory.mktemp("full") / "run"
    assert main([str(a) for a in quick(tiny, out, "--method", "full", "--save-total-limit", "0")]) == 0
    return out


def test_an_encoder_with_prompt_response_data_is_refused_naming_smollm2(tiny, tmp_path, capsys):
    """It trained MiniLM as a causal LM from scratch (test perplexity 48,128) and answered nonsense."""
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"prompt": f"question {i}?", "response": f"answer {i}."}) + "\n" for i in range(40)))
    code, _, err = run(["train", "--model", tiny["model"], "--data", qa, "--out", tmp_path / "run"], capsys)
    assert code == 2
    assert "is an encoder (bert, BertForSequenceClassification): it reads text but was not trained to write it" in err
    assert "Use a decoder language model: --model smollm2" in err
    assert not (tmp_path / "run").exists()


def test_eval_of_a_model_without_a_trained_head_is_refused(tiny, capsys):
    """`loralab eval --model minilm --data movie` scored a random head without saying so."""
    code, _, err = run(["eval", "--model", "minilm", "--data", tiny["data"]], capsys)
    assert code == 2 and "has no trained classification head" in err and "the head would be random" in err


def test_a_baseline_trained_on_other_settings_is_refused(tiny, full_run, tmp_path, capsys):
    """`intrinsic --baseline` took a full-FT run of other settings as the 100% of d90."""
    code, _, err = run(["intrinsic", "--model", tiny["model"], "--data", tiny["data"], "--dims", "20", "--seeds", "0",
                        "--epochs", "2", "--baseline", full_run, "--out", tmp_path / "sweep"], capsys)
    assert code == 2 and f"--baseline {full_run} was trained on other settings than the sweep (" in err
    assert "epochs: baseline 1, sweep 2" in err


def test_save_total_limit_zero_keeps_no_checkpoint(full_run):
    """A finished full-FT run kept a checkpoint/ four times the model's size, with no way to prune it."""
    assert (full_run / "result.json").exists() and (full_run / "model").is_dir()
    assert not (full_run / "checkpoint").exists() or not any((full_run / "checkpoint").iterdir())


def test_predict_says_which_blank_lines_it_skipped(full_run, tmp_path, capsys):
    """`predict --file` skipped blank lines silently, so outputs no longer lined up with inputs."""
    inputs = tmp_path / "inputs.txt"
    inputs.write_text("a moving film\n\nflat and dull\n   \n")
    code, out, err = run(["predict", full_run, "--file", inputs], capsys)
    assert code == 0 and len(out.splitlines()) == 2
    assert f"loralab predict: {inputs}: skipped 2 blank line(s) (2, 4); one output line per non-blank input line." in err


def test_predict_from_standard_input_names_blank_lines_too(full_run, monkeypatch, capsys):
    """Standard input (`--file -`) dropped blank lines without saying so."""
    monkeypatch.setattr("sys.stdin", io.StringIO("\na moving film\n\n"))
    code, out, err = run(["predict", full_run, "--file", "-"], capsys)
    assert code == 0 and len(out.splitlines()) == 1
    assert "loralab predict: -: skipped 2 blank line(s) (1, 3); one output line per non-blank input line." in err


def test_compare_shows_parameter_shares_as_percentages(full_run, capsys):
    """Full FT's trainable share printed as `22,713,986 (1e+02%)`."""
    code, out, _ = run(["compare", full_run], capsys)
    assert code == 0 and "e+02%" not in out and "(100%)" in out


@pytest.mark.slow
def test_first_smollm2_use_writes_one_line_to_a_log(tmp_path):
    """The first use converts the packaged GGUF; in a log file (stderr not a terminal) that used to leave transformers'
    carriage-return progress bar and its tokenizer 'legacy behaviour' notice."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "LORALAB_CACHE": str(tmp_path / "cache"), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "loralab", "eval", "--model", "smollm2", "--data", "chat-qa",
                           "--max-eval", "4"], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.splitlines() == [f"loralab: converting SmolLM2's GGUF to a float32 model in "
                                        f"{tmp_path / 'cache' / 'smollm2-135m-instruct'} (once, about a minute)"]
    assert json.loads(proc.stdout)["test"]["n"] == 4
