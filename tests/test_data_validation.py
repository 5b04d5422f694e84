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


def test_non_utf8_names_file_line_and_fix(tmp_path):
    path = write(tmp_path, "latin.csv", ("text,label\n" + rows(20) + "caf\xe9 au lait,pos\n").encode("latin-1"), "wb")
    with pytest.raises(DataError, match=r"latin.csv:22 is not UTF-8 \(byte 0xe9\); re-save the file as UTF-8, e.g. "
                                        r"iconv -f latin1 -t utf-8 latin.csv > fixed.csv"):
        datasets.load(path)


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
    subprocess.run(command.replace("python ", f"{sys.executable} ", 1), shell=True, cwd=tmp_path, check=True)
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
