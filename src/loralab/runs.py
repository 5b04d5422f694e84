"""Using finished runs: evaluate a run or an adapter, merge a run into a plain HF model directory,
predict on new inputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

import loralab as ll
from loralab import data as datasets
from loralab import models
from loralab.errors import ConfigError, DataError
from loralab.io.atomic import atomic_directory, readable_json
from loralab.io.peft_format import CONFIG_FILE, read_adapter_dir, split_adapter_tensors
from loralab.methods import get_method
from loralab.rundir import RunDir, adapter_labels
from loralab.train.batching import chat_prompt, collate, encode
from loralab.train.config import TrainConfig
from loralab.train.devices import resolve_device
from loralab.train.evaluate import evaluate
from loralab.train.run_dir import lock_holder


def read_run(run: str | Path) -> TrainConfig:
    path = RunDir(run).config_file
    holder = lock_holder(Path(run)) if Path(run).is_dir() else None
    if not path.exists() and holder:
        raise DataError(f"{run} is still training ({holder}): it has just started.")
    if not path.exists():
        if (Path(run) / CONFIG_FILE).exists():
            raise DataError(f"{run} is an adapter directory, not a run: give its run directory (the --out of "
                            f"`loralab train`). `loralab eval --model MODEL --adapter {run} --data DATA` evaluates "
                            "an adapter on its own.")
        raise DataError(f"{run} is not a run directory (no config.json); give the --out of a `loralab train` run.")
    cfg = TrainConfig.from_dict(json.loads(path.read_text()))
    method = get_method(cfg.method)
    if not RunDir(run).artefact(method.saved_as).exists():
        if holder:
            raise DataError(f"{run} is still training ({holder}): its {method.saved_as}/ is written when it finishes.")
        raise DataError(f"{run} has no {method.saved_as}/: the run did not finish (resume it with "
                        f"`loralab train ... --out {run} --resume`).")
    return cfg


def load_run(run: str | Path):
    """(config, trained model ready to evaluate, tokenizer, labels, task) of a finished run."""
    cfg = read_run(run)
    task, labels, _ = datasets.read_all(cfg.data)
    net, tokenizer = get_method(cfg.method).load(cfg, Path(run), task, len(labels) or None)
    return cfg, net, tokenizer, labels, task


def evaluate_adapter(model: str, data: str, adapter: Optional[str | Path], seed: int = 0,
                     max_eval: Optional[int] = None, max_length: int = 128, batch_size: int = 64) -> dict:
    """Validation and test metrics of a model (plus a PEFT-format adapter) on a dataset's seeded splits."""
    task, labels, _ = datasets.read_all(data)
    if task == "classification" and not models.has_classification_head(model) and \
            (adapter is None or not read_adapter_dir(adapter)[0].modules_to_save):
        raise DataError(f"model {model!r} has no trained classification head (its checkpoint is "
                        f"{models.architectures(model) or 'a bare encoder'}), so the head would be random and the metrics "
                        "chance. Evaluate a run (`loralab eval RUN`), a merged model, or --adapter DIR with a trained head.")
    net, tokenizer = models.load(model, task, num_labels=len(labels) or None)
    if adapter is not None:
        ll.load_adapter(net, adapter)
    return evaluate_splits(net, tokenizer, labels, task, datasets.load_splits(data, seed, 0, max_eval), max_length,
                           batch_size)


def evaluate_run(run: str | Path, data: Optional[str] = None, seed: Optional[int] = None,
                 max_eval: Optional[int] = None) -> dict:
    """Re-evaluate a finished run: on its own splits, or on ``data`` / ``seed`` / ``max_eval`` when given.

    Another dataset must have the run's task and, for classification, the run's label names.
    """
    cfg, net, tokenizer, labels, task = load_run(run)
    if data is not None and data != cfg.data:
        other_task, other_labels, _ = datasets.read_all(data)
        if other_task != task:
            raise DataError(f"--data {data} is {describe_task(other_task, other_labels)}; run {run} was trained on "
                            f"{describe_task(task, labels)}. Evaluate on data of the run's kind.")
        if task == "classification" and other_labels != labels:
            raise DataError(f"--data {data} has labels {other_labels}; run {run} was trained for labels {labels}. "
                            "Evaluate on a dataset with the same labels.")
    own_splits = data is None or data == cfg.data
    splits = datasets.load_splits(data or cfg.data, cfg.seed if seed is None else seed, 0,
                                  cfg.max_eval if max_eval is None else max_eval,
                                  cfg.val_data if own_splits else None, cfg.test_data if own_splits else None)
    # evaluated as it was trained (precision, batches), so a run's own test metrics reproduce
    return evaluate_splits(net, tokenizer, labels, task, splits, cfg.max_length, cfg.eval_batch_size, cfg.eval_tokens,
                           cfg.precision)


def describe_task(task: str, labels: list[str]) -> str:
    return f"classification data with labels {labels}" if task == "classification" else "prompt/response data"


def evaluate_splits(net, tokenizer, labels, task, splits: dict, max_length: int, batch_size: int = 64,
                    max_tokens: int = 16384, precision: str = "fp32") -> dict:
    """Validation and test metrics of ``net`` on ``splits`` (`data.load_splits`), on this machine's device."""
    device = resolve_device("auto")
    net.to(device)
    results = {}
    for split in ("validation", "test"):
        rows = encode(splits[split], tokenizer, max_length)
        results[split] = evaluate(net, rows, task, len(labels), tokenizer.pad_token_id, batch_size, desc=split,
                                  max_tokens=max_tokens, precision=precision, device=device)
    return results


def check_merge_out(run: Path, out: Path, kind: str = "run") -> None:
    """The merged model goes to a new (or empty) directory outside the run (or adapter directory)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a new directory for the merged model.")
    resolved_run, resolved_out = run.resolve(), out.resolve()
    if resolved_out == resolved_run or resolved_run in resolved_out.parents or resolved_out in resolved_run.parents:
        raise ConfigError(f"--out {out} is the {kind} directory {run}, inside it or above it; merging there would mix "
                          f"the merged model with the {kind}'s files. Give a directory outside the {kind}.")
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"--out {out} is not empty; give a new directory for the merged model (nothing was written).")


def merge_run(run: str | Path, out: str | Path) -> Path:
    """Write a run's model with its update merged in as a plain HF model directory (safetensors).

    The model is written to a temporary directory next to ``out`` and renamed into place.
    """
    run, out = Path(run), Path(out)
    check_merge_out(run, out)
    cfg, net, tokenizer, labels, task = load_run(run)
    return save_merged(get_method(cfg.method).merge(net), tokenizer, labels, out)


def merge_adapter(model: str, adapter: str | Path, out: str | Path, labels: Optional[list[str]] = None) -> Path:
    """``model`` with a PEFT-format ``adapter`` merged in, as a plain HF model directory (see `adapter_task`
    for the task and label names); written like `merge_run`."""
    adapter, out = Path(adapter), Path(out)
    check_merge_out(adapter, out, kind="adapter")
    net, tokenizer, labels, _ = model_with_adapter(model, adapter, labels)
    return save_merged(net, tokenizer, labels, out)


def save_merged(net, tokenizer, labels: list[str], out: Path) -> Path:
    """Write a merged model (label names in its config) through a temporary directory renamed to ``out``."""
    if labels:
        net.config.id2label = dict(enumerate(labels))
        net.config.label2id = {name: i for i, name in enumerate(labels)}
    with atomic_directory(out) as staging, torch.no_grad():
        net.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
    return out


def adapter_task(model: str, adapter: str | Path, labels: Optional[list[str]]) -> tuple[str, list[str]]:
    """(task, label names) for ``model`` plus a PEFT-format ``adapter``: a causal LM when the adapter says
    so (task_type CAUSAL_LM) or carries no head on a causal LM; else a classifier whose label count is
    the adapter's head's (the smallest output size among its saved head weights: the output layer), named
    by ``labels``, the names the adapter keeps (`rundir.adapter_labels`: a run's adapter, a composed one), the model's
    own label names, or LABEL_0, LABEL_1, … as Hugging Face names them."""
    cfg, tensors = read_adapter_dir(adapter)
    heads = {name.split(".")[-1] for name in cfg.modules_to_save}
    head_sizes = [t.shape[0] for key, t in split_adapter_tensors(tensors)[1].items()
                  if t.dim() == 2 and heads & set(key.split(".")[:-1])]
    task_type = json.loads((Path(adapter) / CONFIG_FILE).read_text()).get("task_type")
    own_task, own_labels = model_task(model)
    if task_type == "CAUSAL_LM" or (not head_sizes and own_task == "causal_lm"):
        return "causal_lm", []
    if not head_sizes and own_task != "classification":
        raise DataError(f"adapter {adapter} carries no classification head (modules_to_save) and model {model!r} has "
                        "none of its own: there is nothing to predict labels with. Give the model the adapter was "
                        "trained on with its head, or a run directory.")
    count = min(head_sizes) if head_sizes else len(own_labels)
    if labels is not None and len(labels) != count:
        raise ConfigError(f"--labels names {len(labels)} labels; the classification head has {count}.")
    saved = adapter_labels(adapter)
    if labels is None and saved is not None and len(saved) == count:
        return "classification", saved
    return "classification", labels or (own_labels if len(own_labels) == count else [f"LABEL_{i}" for i in range(count)])


def model_with_adapter(model: str, adapter: str | Path, labels: Optional[list[str]] = None):
    """(``model`` with ``adapter`` merged in, tokenizer, label names, task)."""
    task, names = adapter_task(model, adapter, labels)
    net, tokenizer = models.load(model, task, num_labels=len(names) or None)
    ll.load_adapter(net, adapter)
    return ll.merge_and_unload(net), tokenizer, names, task


def model_for_prediction(run: Optional[str | Path] = None, model: Optional[str] = None,
                         adapter: Optional[str | Path] = None, labels: Optional[list[str]] = None):
    """(plain model in eval mode, tokenizer, labels, task, token limit) of a run (its update merged in; the
    run's --max-length), of a model plus a PEFT-format adapter (see `adapter_task`; 128 tokens), or of a
    model directory with a task head (a merged run, any HF classifier or causal LM; 128 tokens)."""
    if (run is None) == (model is None):
        raise ConfigError("give a run directory (RUN) or --model DIR (a merged run or a classifier / causal LM, "
                          "or any model with --adapter DIR).")
    if run is not None and adapter is not None:
        raise ConfigError("RUN predicts with the run's own adapter; --adapter goes with --model.")
    if run is not None:
        cfg, net, tokenizer, labels, task = load_run(run)
        net, max_length = get_method(cfg.method).merge(net), cfg.max_length
    elif adapter is not None:
        net, tokenizer, labels, task = model_with_adapter(model, adapter, labels)
        max_length = 128
    else:
        task, labels = task_of(model)
        net, tokenizer = models.load(model, task)
        max_length = 128
    return net.eval(), tokenizer, labels, task, max_length


def model_task(model: str) -> tuple[Optional[str], list[str]]:
    """("classification", label names), ("causal_lm", []) or (None, []) from a model directory's architectures."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(models.resolve(model))
    architectures = config.architectures or []
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return "classification", [config.id2label[i] for i in range(config.num_labels)]
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return "causal_lm", []
    return None, []


def task_of(model: str) -> tuple[str, list[str]]:
    """`model_task` of a model that must have a trained task head to predict with."""
    task, labels = model_task(model)
    if task is not None:
        return task, labels
    from transformers import AutoConfig

    architectures = AutoConfig.from_pretrained(models.resolve(model)).architectures or []
    raise DataError(f"model {model!r} ({', '.join(architectures) or 'no architectures in config.json'}) has no "
                    "trained task head to predict with; give a run directory, or a model merged from one "
                    "(`loralab merge RUN --out DIR`).")


@torch.no_grad()
def classify(net, tokenizer, labels: list[str], texts: list[str], max_length: int, batch_size: int = 32) -> list[dict]:
    """{"text", "label", "probabilities": {label: p}} per text, in input order; batched by length (less
    padding), each batch padded as in training (`collate`)."""
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
    results: list[dict] = [{}] * len(texts)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        batch = collate([{"input_ids": ids[i], "labels": 0} for i in chunk], tokenizer.pad_token_id)
        batch.pop("labels")
        for i, p in zip(chunk, net(**batch).logits.float().softmax(-1).tolist()):
            best = max(range(len(p)), key=p.__getitem__)
            results[i] = {"text": texts[i], "label": labels[best],
                          "probabilities": {name: round(v, 6) for name, v in zip(labels, p)}}
    return results


@torch.no_grad()
def answer(net, tokenizer, prompts: list[str], max_new_tokens: int, max_length: int) -> list[dict]:
    """{"prompt", "response"} per prompt: greedy decoding after the prompt in the chat format of training."""
    results = []
    for prompt in prompts:
        ids = tokenizer(chat_prompt(tokenizer, prompt), add_special_tokens=False, return_tensors="pt")["input_ids"]
        ids = ids[:, -max_length:]
        out = net.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                           do_sample=False, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        response = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
        results.append({"prompt": prompt, "response": response})
    return results


def predict(inputs: list[str], run: Optional[str | Path] = None, model: Optional[str] = None,
            max_new_tokens: int = 64, batch_size: int = 32, max_length: Optional[int] = None,
            adapter: Optional[str | Path] = None, labels: Optional[list[str]] = None) -> list[dict]:
    """Labels with probabilities (classification) or generated responses (causal LM) for ``inputs``;
    ``max_length`` tokens per input (default: the run's, or 128)."""
    if not inputs:
        raise DataError("nothing to predict on: give texts (--text), or --file FILE (a .txt with one per line, "
                        "a .csv/.tsv/.jsonl with a text or prompt column, or - for standard input).")
    net, tokenizer, labels, task, default_length = model_for_prediction(run, model, adapter, labels)
    max_length = max_length or default_length
    models.check_max_length(net, tokenizer, max_length, model or str(run))
    with ll.frozen(net):  # serving: DoRA norms (and the like) computed once, not per call
        if task == "classification":
            return classify(net, tokenizer, labels, inputs, max_length, batch_size)
        return answer(net, tokenizer, inputs, max_new_tokens, max_length)


# ----- comparing runs ------------------------------------------------------------------------------
SHOWN_ALWAYS = ("method", "model", "data")
NOT_COMPARED = ("out", "resume", "overwrite")  # where a run is and how it was started, not what it is


def run_row(run: Path) -> dict:
    """One run's config, status and (when finished) its parameters, metrics, time and memory."""
    from loralab.train.checkpoint import STATE_FILE

    rundir = RunDir(run)
    config = TrainConfig.from_dict(rundir.config())
    cfg = config.flat(frozenset(config.ignored_fields()) | set(NOT_COMPARED))
    row = {"run": str(run), "config": cfg}
    files = {path.relative_to(run).as_posix(): path for path in (rundir.result_file, rundir.checkpoint / STATE_FILE)
             if path.exists()}
    read = {name: readable_json(path) for name, path in files.items()}
    result, state, holder = rundir.result(), read.get(f"{rundir.checkpoint.name}/{STATE_FILE}"), lock_holder(run)
    damaged = [name for name, value in read.items() if value is None]
    if damaged:
        row["status"] = f"damaged: {', '.join(damaged)} is not readable JSON"
    elif result:
        row.update(status="finished", trainable=result.trainable_params, total=result.total_params,
                   best_epoch=result.best_epoch, validation=result.validation, test=result.test,
                   seconds=result.wall_time_s, peak_mb=result.peak_memory_mb)
    elif holder:
        row["status"] = f"training ({holder})" + (f"; checkpoint at step {state['step']}, epoch {state['epoch']} of "
                                                  f"{cfg['epochs']}" if state else "")
    elif state:
        row["status"] = f"stopped: step {state['step']}, epoch {state['epoch']} of {cfg['epochs']} (--resume)"
    else:
        row["status"] = "stopped before its first checkpoint (nothing to resume)"
    return row


def is_run(path: Path) -> bool:
    """A `loralab train --out` directory: its config.json holds TrainConfig fields (a model's does not)."""
    return RunDir(path).is_run()


def compare_runs(paths: list[str | Path]) -> dict:
    """Runs side by side: {"common": config values every run shares, "varying": the fields that differ,
    "rows": `run_row` of each, "skipped": directories that are not runs}."""
    runs, skipped = [], []
    for path in map(Path, paths):
        (runs if is_run(path) else skipped).append(path)
    if not runs:
        raise DataError(f"none of {[str(p) for p in paths]} is a run directory (the --out of `loralab train`, "
                        "holding its config.json).")
    rows = [run_row(run) for run in runs]
    fields = [name for name in TrainConfig().flat() if any(name in r["config"] for r in rows)]
    # a field only some runs' methods read (a LoRA run's r next to a full run) is "–" for the others, and
    # shown when it is set where it is read
    read = {f: [json.dumps(r["config"][f], sort_keys=True) for r in rows if f in r["config"]] for f in fields}
    common = {f: rows[0]["config"][f] for f in fields if len(read[f]) == len(rows) and len(set(read[f])) == 1}
    varying = [f for f in fields if f not in common and set(read[f]) - {"null", "false", "{}"}]
    return {"common": common, "varying": varying, "rows": rows, "skipped": [str(p) for p in skipped]}


LOWER_IS_BETTER = ("loss", "perplexity")
RUN_NUMBERS = ("trainable", "seconds", "peak_mb")


def sort_rows(table: dict, key: str) -> None:
    """Order ``table``'s rows by ``key``, in place: ``test.METRIC`` or ``val.METRIC`` best first (accuracy and
    F1 high, loss and perplexity low), a setting (lr, r, seed, …) or trainable/seconds/peak_mb ascending;
    rows without a value (unfinished runs) last."""
    rows = table["rows"]
    split, _, metric = key.partition(".")
    if split in ("val", "validation", "test") and metric:
        split = "test" if split == "test" else "validation"
        if not any(metric in r.get(split, {}) for r in rows):
            found = sorted({k for r in rows for k in r.get(split, {}) if k != "n"})
            raise ConfigError(f"--sort {key}: no run has {split} {metric!r}; these have {found}.")
        sign = 1 if metric in LOWER_IS_BETTER else -1
        rows.sort(key=lambda r: (r.get(split, {}).get(metric) is None, sign * (r.get(split, {}).get(metric) or 0)))
        return
    if key in RUN_NUMBERS:
        rows.sort(key=lambda r: (r.get(key) is None, r.get(key) or 0))
        return
    if not any(key in r["config"] for r in rows):
        raise ConfigError(f"--sort takes test.METRIC or val.METRIC (e.g. test.accuracy, val.loss), a setting of the "
                          f"runs (e.g. lr, r, seed) or one of {list(RUN_NUMBERS)}; got {key!r}.")

    def setting(row):
        value = row["config"].get(key)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return value is None, not number, value if number else 0, str(value)
    rows.sort(key=setting)


def comparison_markdown(table: dict) -> str:
    """`compare_runs` as a Markdown table: the shared settings above it, one row per run with the fields
    that differ, trainable parameters, the validation and test metrics, wall time and peak memory."""
    common, rows = table["common"], table["rows"]
    shown = [f for f in SHOWN_ALWAYS if f in common]
    lines = ["All runs: " + ", ".join(f"{f} {common[f]}" for f in shown) + " (the other shared settings: --json)",
             ""] if shown else []
    metrics = [(split, key) for split in ("validation", "test") for key in
               dict.fromkeys(k for r in rows if "test" in r for k in r[split] if k != "n")]
    header = ["run", *table["varying"], "trainable", "best epoch",
              *(f"{'val' if split == 'validation' else split} {key}" for split, key in metrics), "s", "MB"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["run"], *(cell(r["config"].get(f)) for f in table["varying"])]
        if r["status"] == "finished":
            cells += [f"{r['trainable']:,} ({100 * r['trainable'] / r['total']:.2g}%)", str(r["best_epoch"]),
                      *(cell(r[s].get(k)) for s, k in metrics), f"{r['seconds']:.0f}", cell(r["peak_mb"], ".0f")]
        else:
            cells += [r["status"]] + [""] * (len(header) - len(cells) - 1)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cell(value, spec: str = ".4g") -> str:
    if value is None:
        return "–"
    if isinstance(value, dict):  # a rank or alpha pattern: its size, not its text
        return f"{{{len(value)} entries}}" if value else "–"
    if isinstance(value, float):
        return format(value, spec)
    return value if isinstance(value, str) else json.dumps(value)
