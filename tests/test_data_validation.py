"""Datasets and models that are wrong fail at once, naming the file, the line and the fix."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from loralab import data as datasets
from loralab import models
from loralab.errors import DataError


def write(tmp_path, name: str, content, mode: str = "w"):
    path = tmp_path / name
    if mode == "wb":
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return str(path)


def rows(n: int, labels=("pos", "neg")) -> str:
    return "".join(f"example number {i},{labels[i % len(labels)]}\n" for i in range(n))


@pytest.mark.parametrize("name,content,message", [
    ("one.csv", "text,label\n" + rows(40, ("pos",)),
     r"one.csv: every row has the label 'pos'; classification needs at least 2 classes"),
    ("nolabel.csv", "text,label\n" + rows(20) + "a row without a label,\n",
     r"nolabel.csv:22 has no label; every row needs one \(or drop the row\)"),
    ("nolabel.jsonl", '{"text": "a", "label": 1}\n{"text": "b"}\n', r"nolabel.jsonl:2 has no label"),
    ("notext.jsonl", '{"text": "a", "label": 1}\n\n{"label": 0}\n',
     r"notext.jsonl:3 has no text; every row needs a non-empty 'text'"),
    ("emptytext.csv", "text,label\n" + rows(20) + ",pos\n", r"emptytext.csv:22 has no text"),
    ("mixed.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": "positive"}\n',
     r"mixed.jsonl: labels mix numbers \(\S*mixed.jsonl:1: '1'\) and names \(\S*mixed.jsonl:2: 'positive'\); use one "
     r"kind for every row"),
    ("tiny.csv", "text,label\na,x\nb,y\nc,x\nd,y\n",
     r"tiny.csv has 4 rows: too few for the 80/10/10 split \(the validation, test splits are empty\); give at "
     r"least 10 rows per class"),
    ("array.jsonl", '[1, 2]\n', r"array.jsonl:1 is a JSON list; each line must be an object"),
    ("cols.csv", "sentence,score\nhello,1\n", r"cols.csv has columns \['score', 'sentence'\]; it needs text,label"),
])
def test_bad_dataset_files(tmp_path, name, content, message):
    with pytest.raises(DataError, match=message):
        datasets.load(write(tmp_path, name, content))


def read_error(tmp_path, name: str, content) -> str:
    with pytest.raises(DataError) as err:
        datasets.read_all(write(tmp_path, name, content, "wb" if isinstance(content, bytes) else "w"))
    return str(err.value)


def test_files_that_would_be_read_wrong_are_refused(tmp_path):
    """Issue 35: a repeated column (the last one silently won), an unquoted comma (extra fields dropped, the
    label shifted), a stray quote (rows merged into one text, a fragment made a class), non-string JSONL text
    (stringified and trained on), a lone surrogate, NUL bytes, JSON nested 200,000 deep."""
    dup = "text,text,label\n" + "".join(f"a,b{i},{i % 2}\n" for i in range(30))
    assert "the header names column(s) ['text'] more than once" in read_error(tmp_path, "dup.csv", dup)
    ragged = "text,label\n" + rows(2) + "a nice, funny film,pos\n" + rows(20)
    assert "ragged.csv:4 has 3 fields, the header 2: an unquoted comma in the text?" in read_error(
        tmp_path, "ragged.csv", ragged)
    stray = "text,label\n" + rows(2) + '"hi there,pos\n' + rows(20) + 'end" here,neg\n'
    assert "stray.csv:4: a quote opened in this row runs over the next" in read_error(tmp_path, "stray.csv", stray)
    for value in ("[1, 2]", '{"a": 1}', "3.5"):
        lines = '{"text": "ok", "label": 1}\n{"text": ' + value + ', "label": 0}\n'
        assert "list.jsonl:2: 'text' is a JSON" in read_error(tmp_path, "list.jsonl", lines)
    surrogate = '{"text": "ok", "label": 1}\n{"text": "\\ud800", "label": 0}\n'
    assert "sur.jsonl:2: 'text' holds a lone surrogate" in read_error(tmp_path, "sur.jsonl", surrogate)
    assert "nul.csv:3 holds a NUL byte" in read_error(tmp_path, "nul.csv", "text,label\na,pos\nb\x00c,neg\n")
    deep = "[" * 200_000 + "]" * 200_000 + "\n"
    assert "deep.jsonl:1 is not valid JSON (nested too deeply)" in read_error(tmp_path, "deep.jsonl", deep)


def test_files_that_read_right_now(tmp_path):
    """CR-only line ends and a field over csv's 131,072-character limit (both a raw _csv.Error before); a quoted
    text over several lines that does not look like rows; labels are case-sensitive names (documented)."""
    cr = "text,label\r" + "".join(f"row {i},{['pos', 'neg'][i % 2]}\r" for i in range(30))
    assert len(datasets.read_all(write(tmp_path, "cr.csv", cr))[2]) == 30
    huge = "text,label\n" + "x" * 200_000 + ",pos\n" + rows(30)
    assert len(datasets.read_all(write(tmp_path, "huge.csv", huge))[2][0]["text"]) == 200_000
    multi = "text,label\n" + '"first line\nsecond, line of the same review",pos\n' + rows(30)
    assert datasets.read_all(write(tmp_path, "multi.csv", multi))[2][0]["text"].count("\n") == 1
    cased = "text,label\n" + "".join(f"row {i},{['pos', 'POS', 'neg'][i % 3]}\n" for i in range(30))
    assert datasets.read_all(write(tmp_path, "cased.csv", cased))[1] == ["POS", "neg", "pos"]


def test_non_utf8_names_file_line_and_fix(tmp_path):
    path = write(tmp_path, "latin.csv", ("text,label\n" + rows(20) + "caf\xe9 au lait,pos\n").encode("latin-1"), "wb")
    with pytest.raises(DataError, match=r"latin.csv:22 is not UTF-8 \(byte 0xe9\); re-save the file as UTF-8, e.g. "
                                        r"iconv -f latin1 -t utf-8 (.*)") as err:
        datasets.load(path)
    import subprocess

    command = str(err.value).split("e.g. ", 1)[1]  # run from elsewhere: the command names the file with its directory
    subprocess.run(command, shell=True, cwd=Path(tmp_path).parent, check=True)
    assert datasets.read_all(str(tmp_path / "fixed.csv"))[1] == ["neg", "pos"]


def test_bom_is_stripped_and_numeric_labels_are_one_class(tmp_path):
    text = "text,label\n" + "".join(f"row {i},{['1', '1.0', '0', '0.0'][i % 4]}\n" for i in range(40))
    path = write(tmp_path, "bom.csv", ("\ufeff" + text).encode("utf-8"), "wb")
    train = datasets.load(path, "train")
    assert train.labels == ["0", "1"]
    assert {e["label"] for e in train.examples} == {0, 1}
    jsonl = write(tmp_path, "n.jsonl", "".join(json.dumps({"text": f"r{i}", "label": [1, 1.0, 0, 0.0][i % 4]}) + "\n"
                                               for i in range(40)))
    assert datasets.load(jsonl).labels == ["0", "1"]


def test_tsv_with_glue_columns_loads_quotes_as_text(tmp_path):
    """GLUE's SST-2 layout: a .tsv with sentence<TAB>label, quotes that are part of the text."""
    body = "".join(f'" a film " number {i}\t{i % 2}\n' for i in range(40))
    path = write(tmp_path, "sst2.tsv", "sentence\tlabel\n" + body)
    rows = datasets.read_all(path)
    assert rows[0] == "classification" and rows[1] == ["0", "1"]
    assert rows[2][3] == {"text": '" a film " number 3', "label": 1}


def test_json_array_is_refused_with_a_command_that_converts_it(tmp_path):
    import subprocess
    import sys

    records = [{"text": f"row {i}", "label": i % 2} for i in range(40)]
    path = write(tmp_path, "data.json", json.dumps(records))
    with pytest.raises(DataError, match=r"data.json: loralab reads JSON Lines .* convert it with: (.*)") as err:
        datasets.load(path)
    command = str(err.value).split("convert it with: ", 1)[1]
    subprocess.run(command.replace("python ", f"{sys.executable} ", 1), shell=True, cwd=Path(tmp_path).parent,
                   check=True)  # run from elsewhere: the command names the file with its directory
    assert datasets.read_all(str(tmp_path / "data.jsonl"))[1] == ["0", "1"]


def test_causal_lm_rows_need_prompt_and_response(tmp_path):
    path = write(tmp_path, "qa.jsonl", '{"prompt": "hi", "response": "hello"}\n{"prompt": "x", "response": ""}\n')
    with pytest.raises(DataError, match=r"qa.jsonl:2 has no response"):
        datasets.load(path)


@pytest.mark.parametrize("given,message", [
    ("/no/such/dir", r"model '/no/such/dir' is not a packaged model \('minilm', 'smollm2'\) nor an existing directory"),
    ("mini-lm", r"model 'mini-lm' is not a packaged model \('minilm', 'smollm2'\) nor an existing directory "
                r"\(a Hugging Face model directory holds config.json, model.safetensors"),
    ("someorg/somemodel", r"model 'someorg/somemodel' looks like a hub id, but the hub is out of reach \(offline, "
                          r"or HF_HUB_OFFLINE is set\)\. Use a packaged model"),
    # the base a PEFT adapter trained online names: the packaged copy is offered
    ("sentence-transformers/all-MiniLM-L6-v2", r"out of reach .* It is what the packaged 'minilm' holds: give --model "
                                               r"minilm\."),
])
def test_bad_model_names_fail_at_once(given, message, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.time()
    with pytest.raises(DataError, match=message):
        models.load(given, "classification", num_labels=2)
    assert time.time() - started < 2  # no network retries


def test_directory_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"is not a Hugging Face model directory: it has no config.json \(it needs "
                                        r"config.json, model.safetensors"):
        models.load(str(tmp_path), "classification", num_labels=2)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(DataError, match=r"has no safetensors weights .* It holds \['pytorch_model.bin'\]: pickle files, "
                                        r"which loralab never loads"):
        models.load(str(tmp_path), "classification", num_labels=2)


def test_hub_probe_respects_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert models.hub_reachable() is False
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_model_directory_without_its_tokenizer(tiny, tmp_path):
    for name in ("config.json", "model.safetensors"):
        shutil.copy(Path(tiny["model"]) / name, tmp_path / name)
    with pytest.raises(DataError) as refused:
        models.load(str(tmp_path), "classification", num_labels=2)
    assert str(refused.value) == (
        f"cannot load the tokenizer of model {str(tmp_path)!r}: {tmp_path} holds no tokenizer files (tokenizer.json, "
        "tokenizer_config.json, vocab.txt, vocab.json, *.model); save the tokenizer next to the weights: "
        "tokenizer.save_pretrained(DIR).")
    shutil.copy(Path(tiny["model"]) / "tokenizer_config.json", tmp_path)  # the config without the vocabulary
    with pytest.raises(DataError, match=rf"cannot load the tokenizer of model .*transformers says: .* \(are {tmp_path}'s "
                                        r"tokenizer files complete\? tokenizer.save_pretrained\(DIR\) writes them all\)"):
        models.load(str(tmp_path), "classification", num_labels=2)


def test_a_huge_text_is_cut_before_it_is_tokenised():
    """Issue 35: a 10 MB line was tokenised whole (2M words: 58 s, 1.8 GB) to keep its first --max-length tokens.
    The tokenizer now sees at most max_length × 64 characters, and the tokens kept are the same."""
    from transformers import AutoTokenizer

    from loralab.tasks.batching import encode

    tokenizer = AutoTokenizer.from_pretrained(models.minilm_dir())
    seen = []
    real = tokenizer.__class__.__call__

    def recording(self, texts, *args, **kwargs):
        seen.extend(len(t) for t in texts)
        return real(self, texts, *args, **kwargs)

    huge = "word " * 2_000_000
    dataset = datasets.Dataset("x", "classification", ["a", "b"], [{"text": huge, "label": 0}])
    tokenizer.__class__.__call__ = recording
    try:
        cut = encode(dataset, tokenizer, max_length=32)
    finally:
        tokenizer.__class__.__call__ = real
    assert seen == [32 * 64]
    whole = tokenizer([huge[:100_000]], truncation=True, max_length=32)["input_ids"][0]
    assert cut[0]["input_ids"] == whole


def test_a_jsonl_key_given_twice_is_refused(tmp_path):
    """As with a repeated CSV column, json.loads would keep the last 'label' silently."""
    lines = [json.dumps({"text": f"t{i}", "label": i % 2}) for i in range(30)]
    lines[4] = '{"text": "t4", "label": 0, "label": 1}'
    path = tmp_path / "twice.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"twice\.jsonl:5 names 'label' more than once; which value to read would be a "
                                        r"guess \(JSON readers keep the last\)\. Keep one\."):
        datasets.load(str(path))
