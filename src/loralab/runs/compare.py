"""Runs side by side: the settings that differ, parameters, metrics, time and memory; unfinished runs and where they
stopped."""


from __future__ import annotations

import json
from pathlib import Path

from loralab.errors import ConfigError, DataError
from loralab.io.atomic import readable_json
from loralab.rundir import RunDir
from loralab.train.config import TrainConfig
from loralab.train.run_dir import lock_holder

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
            cells += [f"{r['trainable']:,} ({percent(r['trainable'] / r['total'])})", str(r["best_epoch"]),
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


def percent(share: float) -> str:
    """A share as a percentage with two significant digits, whole numbers from 10% up: 0.33%, 12%, 100%."""
    value = 100 * share
    return f"{value:.0f}%" if value >= 10 else f"{value:.2g}%"
