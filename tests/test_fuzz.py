"""Fuzzing the two loaders users feed files to: adapter directories and dataset files (hypothesis).

Every generated case must end in one of two ways:

* a loaded adapter whose tensors are exactly the file's (cast to the model's dtype), or a loaded
  dataset whose three splits hold exactly the file's rows;
* our own error type (`AdapterError` / `DataError`) with a message — and, for adapters, a model
  that is unchanged (same state, same module types).

Any other exception, a wrong load, or a refusal of a valid file fails the test. The default run
uses a small seeded corpus; ``make fuzz`` (LORALAB_FUZZ=N) runs N cases of each and writes the
outcome counts to ``fuzz_results.json``.
"""

from __future__ import annotations

import collections
import csv
import io
import json
import math
import os
import tempfile
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

import loralab as ll
from conftest import build, inputs, train_step
from loralab import data as datasets
from loralab.data.files import is_number
from loralab.errors import AdapterError, DataError
from loralab.io.peft_format import MAX_WEIGHT

FULL = int(os.environ.get("LORALAB_FUZZ", "0"))
CASES = FULL or 40
SETTINGS = settings(max_examples=CASES, deadline=None, derandomize=not FULL, database=None,
                    suppress_health_check=list(HealthCheck))
OUTCOMES: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


@pytest.fixture(scope="module", autouse=True)
def report_outcomes():
    yield
    if FULL:
        Path("fuzz_results.json").write_text(json.dumps({k: dict(v) for k, v in OUTCOMES.items()}, indent=2) + "\n")
        print("\nfuzz outcomes:", json.dumps({k: dict(v) for k, v in OUTCOMES.items()}))


# ----- adapters -----------------------------------------------------------------------------------
ADAPTER_CONFIGS = [
    dict(r=4, alpha=8, targets=["query", "value"], modules_to_save=["classifier"]),
    dict(r=2, alpha=4, targets=["query", "key"], dora=True),
    dict(r=3, alpha=6, targets=["word_embeddings", "query"], rslora=True),
]


def saved_adapters() -> list[tuple[dict, dict[str, torch.Tensor]]]:
    """(adapter_config.json, tensors) of each base config, after one training step (B ≠ 0)."""
    found = []
    for kw in ADAPTER_CONFIGS:
        model = build("bert")
        ll.inject(model, ll.LoraConfig(**kw))
        train_step(model, inputs())
        with tempfile.TemporaryDirectory() as tmp:
            ll.save_adapter(model, tmp)
            found.append((json.loads((Path(tmp) / "adapter_config.json").read_text()),
                          load_file(str(Path(tmp) / "adapter_model.safetensors"))))
    return found


BASES = saved_adapters()
HOSTILE = [None, -1, 0, 1, 2**40, "8", 8.5, True, [], {}, math.nan, math.inf, -math.inf, "query", ["q_proj"],
           {"query": 2}, {"(": 1}, "all-linear", ".*", [None], ["query", 3],
           # regexes that backtrack catastrophically, pattern maps too large to check one by one, extremes
           "(.*.*)*z", "(a+)+$", "((query)*)*x", {"(.*.*)*z": 2}, {f"layer.{i}.query": 2 for i in range(50_000)},
           1e308, -1e308, 2**63, 1e-320]
FIELDS = ["r", "lora_alpha", "lora_dropout", "target_modules", "rank_pattern", "alpha_pattern", "use_rslora",
          "use_dora", "modules_to_save", "layers_to_transform", "layers_pattern", "peft_type", "bias", "fan_in_fan_out",
          "exclude_modules", "init_lora_weights", "lora_bias", "unknown_field"]
DTYPES = [torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.bool, torch.int8]

config_edits = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(FIELDS), st.sampled_from(HOSTILE)),
    st.tuples(st.just("drop"), st.sampled_from(FIELDS), st.none()),
    st.tuples(st.just("raw"), st.just("config"), st.binary(max_size=40)),
)
tensor_edits = st.tuples(
    st.sampled_from(["drop", "extra", "transpose", "slice", "dtype", "nan", "inf", "rename", "scalar", "huge",
                     "rank4"]),
    st.integers(0, 10_000), st.sampled_from(DTYPES))
file_edits = st.tuples(st.sampled_from(["truncate", "append", "garbage", "delete", "pickle", "dangling link",
                                        "link to a directory", "link"]), st.integers(0, 10_000))
SECONDS_PER_CASE = 10  # an untrusted adapter loads or is refused in bounded time (a backtracking regex took > 60 s)


def edit_config(config: dict, edit) -> bytes:
    kind, name, value = edit
    if kind == "raw":
        return value
    config = dict(config)
    if kind == "drop":
        config.pop(name, None)
    else:
        config[name] = value
    return json.dumps(config).encode()


def edit_tensors(tensors: dict, edit) -> dict:
    kind, pick, dtype = edit
    tensors = dict(tensors)
    key = sorted(tensors)[pick % len(tensors)]
    value = tensors[key]
    if kind == "drop":
        del tensors[key]
    elif kind == "extra":
        tensors[key + ".extra"] = torch.zeros(2)
    elif kind == "transpose" and value.dim() == 2:
        tensors[key] = value.T.contiguous()
    elif kind == "slice" and value.dim():
        tensors[key] = value[: max(0, value.shape[0] - 1)].contiguous()
    elif kind == "dtype":
        tensors[key] = value.to(dtype)
    elif kind in ("nan", "inf") and value.is_floating_point() and value.numel():
        tensors[key] = value.clone().reshape(-1).index_fill(0, torch.tensor([0]), float(kind)).reshape(value.shape)
    elif kind == "rename":
        tensors[key.replace("lora_", "lora__")] = tensors.pop(key)
    elif kind == "scalar":
        tensors[key] = torch.tensor(1.0)
    elif kind == "huge" and value.is_floating_point():
        tensors[key] = torch.full_like(value, 3e38 if value.dtype == torch.float32 else torch.finfo(value.dtype).max)
    elif kind == "rank4" and value.dim() == 2:
        tensors[key] = value.reshape(1, 1, *value.shape)
    return tensors


def write_adapter(root: Path, config: bytes, tensors: dict, file_edit) -> None:
    (root / "adapter_config.json").write_bytes(config)
    weights = root / "adapter_model.safetensors"
    save_file(tensors, str(weights))
    if file_edit is None:
        return
    kind, amount = file_edit
    data = weights.read_bytes()
    if kind == "truncate":
        weights.write_bytes(data[: amount % max(len(data), 1)])
    elif kind == "append":
        weights.write_bytes(data + os.urandom(1 + amount % 64))
    elif kind == "garbage":
        weights.write_bytes(os.urandom(1 + amount % 300))
    elif kind == "delete":
        weights.unlink()
    elif kind == "pickle":
        weights.unlink()
        (root / "adapter_model.bin").write_bytes(b"\x80\x04 not to be unpickled")
    elif kind == "dangling link":
        weights.unlink()
        weights.symlink_to(root / "nowhere.safetensors")
    elif kind == "link to a directory":
        weights.unlink()
        (root / "a_directory").mkdir()
        weights.symlink_to(root / "a_directory")
    elif kind == "link":  # a valid file reached through a symlink loads as the file itself
        target = root / "elsewhere.safetensors"
        weights.rename(target)
        weights.symlink_to(target)


def check_adapter_case(base: int, config_edit, tensor_edits_, file_edit) -> str:
    config, tensors = BASES[base]
    config_bytes = edit_config(config, config_edit) if config_edit else json.dumps(config).encode()
    for edit in tensor_edits_:
        tensors = edit_tensors(tensors, edit)
    model = build("bert")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    types = [type(m) for m in model.modules()]
    with tempfile.TemporaryDirectory() as tmp:
        write_adapter(Path(tmp), config_bytes, tensors, file_edit)
        start = time.perf_counter()
        try:
            ll.load_adapter(model, tmp)
        except AdapterError as err:
            assert time.perf_counter() - start < SECONDS_PER_CASE, "refusing took too long"
            assert str(err), "an error without a message"
            assert [type(m) for m in model.modules()] == types, "a refused load changed the model's modules"
            after = model.state_dict()
            assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
            return "refused"
        assert time.perf_counter() - start < SECONDS_PER_CASE, "loading took too long"
        loaded = ll.adapter_state_dict(model, "default")
        file_tensors = load_file(str(Path(tmp) / "adapter_model.safetensors"))
    for key, value in loaded.items():
        assert torch.equal(value, file_tensors[key].to(value.dtype)), f"{key} differs from the file"
    largest = max((float(t.abs().max()) for t in file_tensors.values() if t.is_floating_point() and t.numel()),
                  default=0.0)
    assert largest <= MAX_WEIGHT, f"an adapter with a weight of {largest:.3g} loaded (its outputs would overflow)"
    return "loaded"


@SETTINGS
@given(base=st.integers(0, len(BASES) - 1), config_edit=st.one_of(st.none(), config_edits),
       tensor_edits_=st.lists(tensor_edits, max_size=2), file_edit=st.one_of(st.none(), st.none(), file_edits))
def test_fuzz_adapter_directories(base, config_edit, tensor_edits_, file_edit):
    outcome = check_adapter_case(base, config_edit, tensor_edits_, file_edit)
    OUTCOMES["adapter"][outcome] += 1
    if config_edit and config_edit[0] == "set":
        OUTCOMES["adapter config value"][f"{hostile_class(config_edit[2])}: {outcome}"] += 1
    for kind, _, _ in tensor_edits_:
        OUTCOMES["adapter tensor edit"][f"{kind}: {outcome}"] += 1
    if file_edit:
        OUTCOMES["adapter file edit"][f"{file_edit[0]}: {outcome}"] += 1


def hostile_class(value) -> str:
    """The kind of a hostile config value, for the counts: nested-repeat regex, huge map, extreme number."""
    if isinstance(value, str) and any(n in value for n in ("*)*", "+)+")):
        return "backtracking regex"
    if isinstance(value, dict) and any(isinstance(k, str) and "*)*" in k for k in value):
        return "backtracking regex"
    if isinstance(value, dict) and len(value) > 1000:
        return "huge pattern map"
    if isinstance(value, (int, float)) and not isinstance(value, bool) and (abs(value) > 1e12 or 0 < abs(value) < 1e-300
                                                                            or value != value):
        return "extreme number"
    return "other"


def test_unedited_adapters_load():
    assert [check_adapter_case(i, None, [], None) for i in range(len(BASES))] == ["loaded"] * len(BASES)


# ----- datasets -----------------------------------------------------------------------------------
LABEL_FAMILIES = {"names": ["pos", "neg", "neutral"], "ints": [0, 1, 2], "floats": [0.0, 1.0, 2.0],
                  "numeric strings": ["0", "1.0", "2"], "bools": [True, False]}
# NUL is refused on purpose (a file holding one is binary or damaged: test_data_validation), so valid texts omit it
texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1,
                max_size=25).filter(str.strip)
DAMAGES = ["drop label", "empty label", "empty text", "drop text", "nan label", "list label", "mix kinds",
           "one class", "odd text"]


@st.composite
def rows_strategy(draw):
    """A valid classification dataset (2–3 classes, 20–70 rows), then 0–2 damages."""
    family = LABEL_FAMILIES[draw(st.sampled_from(sorted(LABEL_FAMILIES)))]
    classes = family[: draw(st.integers(2, len(family)))]
    n = draw(st.integers(20, 70))
    rows = [{"text": draw(texts), "label": classes[i % len(classes)]} for i in range(n)]
    for damage in draw(st.lists(st.sampled_from(DAMAGES), max_size=2)):
        i = draw(st.integers(0, n - 1))
        if damage == "drop label":
            rows[i].pop("label", None)
        elif damage == "empty label":
            rows[i]["label"] = ""
        elif damage == "empty text":
            rows[i]["text"] = " "
        elif damage == "drop text":
            rows[i].pop("text", None)
        elif damage == "nan label":
            rows[i]["label"] = math.nan
        elif damage == "list label":
            rows[i]["label"] = [1]
        elif damage == "mix kinds":
            rows[i]["label"] = "other" if not isinstance(rows[i].get("label"), str) or rows[i]["label"].isalpha() else 7
        elif damage == "one class":
            rows = [{**r, "label": classes[0]} for r in rows]
        elif damage == "odd text":
            rows[i]["text"] = draw(st.sampled_from(['a,b "quoted", c', "two\nlines", "café ☕", "\t tab"]))
    return rows


encodings = st.sampled_from(["utf-8"] * 4 + ["utf-8-sig", "latin-1", "utf-16"])


def render(rows: list[dict], fmt: str, blank_every: int) -> str:
    records = rows
    if fmt == "jsonl":
        lines = [json.dumps(r) for r in records]
    else:
        handle = io.StringIO()
        writer = csv.DictWriter(handle, ["text", "label", "extra"], lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in records)
        lines = handle.getvalue().splitlines()
    if blank_every:
        lines = [line for i, line in enumerate(lines) for line in ([line, ""] if i % blank_every == 0 else [line])]
    return "\n".join(lines) + "\n"


def oracle(path: Path) -> list[tuple[str, str]] | None:
    """The (text, canonical label) rows a valid file holds, or None when the file must be refused."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        return None
    if path.suffix == ".jsonl":
        try:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError:
            return None
        if not all(isinstance(r, dict) for r in records):
            return None
    else:
        records = list(csv.DictReader(io.StringIO(text)))
    if not records or not {"text", "label"} <= set().union(*map(set, records)):
        return None
    out = []
    for r in records:
        label, body = r.get("label"), r.get("text")
        if body is None or not str(body).strip() or isinstance(label, (list, dict)):
            return None
        if isinstance(label, float) and not math.isfinite(label):
            return None
        try:
            name = datasets.canonical_label(label)
        except DataError:
            return None
        if name is None:
            return None
        out.append((str(body), name))
    kinds = {is_number(n) for _, n in out}
    if len(kinds) > 1 or len({n for _, n in out}) < 2:
        return None
    parts = datasets.split_indices([{"label": n} for _, n in out], "classification", 0)
    return out if all(parts.values()) else None


FILE_DAMAGES = ["repeat column", "stray quote", "unquoted delimiter"]


def damage_file(content: str, fmt: str, damage: str, where: int) -> str:
    """A file made wrong the ways a reader could misread without an error: a column (CSV) or key (JSONL) named
    twice, a stray quote opening a field at the start of a row's text, a delimiter in an unquoted text."""
    lines = content.splitlines()
    rows = [i for i, line in enumerate(lines) if line.strip() and not (fmt == "csv" and i == 0)]
    i = rows[where % len(rows)]
    if damage == "repeat column":
        if fmt == "csv":
            lines[0] = lines[0] + ",label"
        elif json.loads(lines[i]):  # the row's first key again, with another value
            first = next(iter(json.loads(lines[i])))
            lines[i] = "{" + json.dumps(first) + ': "other", ' + lines[i].lstrip()[1:]
    elif damage == "stray quote":
        lines[i] = '"' + lines[i] if fmt == "csv" else lines[i]
    elif damage == "unquoted delimiter" and fmt == "csv":
        lines[i] = lines[i] + ",x,y"
    return "\n".join(lines) + "\n"


@SETTINGS
@given(rows=rows_strategy(), fmt=st.sampled_from(["csv", "jsonl"]), encoding=encodings, blank_every=st.integers(0, 5),
       file_damage=st.one_of(st.none(), st.none(), st.tuples(st.sampled_from(FILE_DAMAGES), st.integers(0, 10_000))))
def test_fuzz_dataset_files(rows, fmt, encoding, blank_every, file_damage):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"data.{fmt}"
        content = original = render(rows, fmt, blank_every)
        if file_damage is not None:
            content = damage_file(original, fmt, *file_damage)
        try:
            path.write_bytes(content.encode(encoding))
        except UnicodeEncodeError:
            path.write_bytes(content.encode("utf-8"))
        expected = oracle(path)
        if content != original:  # every damage must be refused: each would be read wrongly without an error
            expected = None
        else:  # a damage that does not apply to this format (a stray quote in JSONL): an undamaged file
            file_damage = None
        try:
            splits = [datasets.load(str(path), split) for split in datasets.SPLITS]
        except DataError as err:
            assert str(err), "an error without a message"
            assert expected is None, f"a valid file was refused: {err}"
            OUTCOMES["dataset"]["refused"] += 1
            OUTCOMES["dataset file damage"][f"{file_damage[0] if file_damage else 'none'}: refused"] += 1
            return
    assert expected is not None, "an invalid file loaded"
    loaded = sorted((e["text"], splits[0].labels[e["label"]]) for s in splits for e in s.examples)
    assert loaded == sorted(expected)
    OUTCOMES["dataset"]["loaded"] += 1
    OUTCOMES["dataset file damage"][f"{file_damage[0] if file_damage else 'none'}: loaded"] += 1
