"""Claim 8's runs: learning–forgetting curves of LoRA r=8, LoRA r=64 (s = α/r) and full fine-tuning of SmolLM2, and
forgetting compared **at matched learning** (Biderman et al. 2024, "LoRA Learns Less and Forgets Less", §4).

* **Target:** chat-qa with every response letter-substituted by one fixed permutation of a–z (`cipher_files`):
  far from anything the instruct model already does (on plain chat-qa it has little to learn), so learning is
  measurable. Prompts stay plain; train/validation/test are chat-qa's seed-0 splits, the same for every run.
* **Curves:** each arm at every learning rate of its grid (`study_plan.SMOLLM2_LR_GRID`), for each of
  `study_plan.FORGETTING_SEEDS`: one point (gain, forgetting) per run. Gain = the base model's test loss on the
  cipher minus the tuned model's. Forgetting = the rise of next-token loss on `REFERENCE_TEXTS` BBC News test
  articles × `REFERENCE_TOKENS` tokens (`analysis.forgetting.lm_forgetting`), per text.
* **Matched learning:** every arm's forgetting is read off its own curve (linear in gain between its points,
  seeds averaged) at one gain all arms reach — the largest gain the weakest arm attains (`matched_gain`) — and
  the difference full FT − LoRA gets a 95% interval by resampling reference texts (`matched_difference`).
* **Along training:** each run is trained again keeping its parameters after `study_plan.SNAPSHOT_STEPS`
  (`train.snapshots`; the same seed and config, so the same trajectory — its end is checked against the end-only
  run). Each snapshot is one more point (gain, forgetting); the comparison is repeated on the curves through every
  point (learning rates × checkpoints) beside the end-of-run one, which stays the primary test.
"""

from __future__ import annotations

import json
import random
import statistics
import string
from pathlib import Path
from typing import Optional

import torch

from loralab.experiments import study_plan as plan
from loralab.experiments.context import Context
from loralab.progress import progress

REFERENCE, REFERENCE_TEXTS, REFERENCE_TOKENS = "bbc", 200, 128
CIPHER_SEED = 0
RESAMPLES = 2000


def cipher(seed: int = CIPHER_SEED) -> dict[str, str]:
    """A fixed permutation of the lower-case letters (upper case follows it), seeded; no letter maps to itself."""
    letters = list(string.ascii_lowercase)
    rng = random.Random(seed)
    while True:
        shuffled = letters[:]
        rng.shuffle(shuffled)
        if all(a != b for a, b in zip(letters, shuffled)):
            break
    table = dict(zip(letters, shuffled))
    return {**table, **{a.upper(): b.upper() for a, b in table.items()}}


def encipher(text: str, table: dict[str, str]) -> str:
    return "".join(table.get(c, c) for c in text)


def cipher_files(root: Path) -> tuple[str, str, str]:
    """(train, validation, test) JSONL files of chat-qa's seed-0 splits with enciphered responses, written once."""
    from loralab import data as datasets

    root.mkdir(parents=True, exist_ok=True)
    table = cipher()
    paths = []
    for split in datasets.SPLITS:
        path = root / f"cipher-qa-{split}.jsonl"
        if not path.exists():
            rows = datasets.load("chat-qa", split, 0).examples
            path.write_text("".join(json.dumps({"prompt": r["prompt"], "response": encipher(r["response"], table)})
                                    + "\n" for r in rows))
        paths.append(str(path))
    return tuple(paths)


def base_and_reference(out: Path, files: tuple[str, str, str]):
    """(base model, tokenizer, reference rows, base test loss on the cipher) — the loss cached in out."""
    from loralab import data as datasets
    from loralab import models
    from loralab.analysis.forgetting import reference_rows
    from loralab.tasks.batching import encode
    from loralab.train.evaluate import evaluate

    base, tokenizer = models.load("smollm2", "causal_lm")
    texts = [e["text"] for e in datasets.load(REFERENCE, "test", 0, REFERENCE_TEXTS).examples]
    rows = reference_rows(texts, tokenizer, REFERENCE_TOKENS)
    cache = out / "smollm2_cipher_base.json"
    if not cache.exists():
        test = encode(datasets.load_splits(files[0], 0, None, None, files[1], files[2])["test"], tokenizer,
                      plan.SMOLLM2_MAX_LENGTH)
        loss = evaluate(base, test, "causal_lm", 0, tokenizer.pad_token_id, 16, progress=False)["loss"]
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"test_loss": loss}))
    return base, tokenizer, rows, json.loads(cache.read_text())["test_loss"]


def smollm2_forgetting(ctx: Context) -> dict:
    """Every arm × learning rate × seed trained on the cipher (cached), each run's gain and per-text forgetting,
    and the comparison at matched gain."""
    files = cipher_files(ctx.out / "forgetting" / "data")
    units = {(arm, lr, seed): plan.smollm2_unit(arm, lr, seed, files)
             for arm in plan.SMOLLM2_ARMS for lr in plan.SMOLLM2_LR_GRID[plan.SMOLLM2_ARMS[arm][0]]
             for seed in plan.FORGETTING_SEEDS}
    results = ctx.run(list(units.values()))
    base, tokenizer, rows, base_loss = base_and_reference(ctx.out / "forgetting", files)
    points = []
    bar = progress(len(units), "forgetting on the reference texts")
    for (arm, lr, seed), unit in units.items():
        r = results[unit.name]
        found = cached_forgetting(ctx.run_dir(unit), base, rows, tokenizer.pad_token_id)
        bar.update()
        points.append({"arm": arm, "lr": lr, "seed": seed, "name": unit.name, "step": r.steps, "end": True,
                       "trainable_params": r.trainable_params,
                       "test_loss": r.test["loss"], "gain": base_loss - r.test["loss"],
                       "forgetting": found["loss_increase"], "kl": found["kl_base_tuned"],
                       "per_text": found["per_text"]})
    bar.close()
    gain = matched_gain(points)
    compared = {arm: matched_difference(points, "full", arm, gain) for arm in plan.SMOLLM2_ARMS if arm != "full"}
    along = snapshot_points(ctx, units, results, files, base, tokenizer, rows, base_loss)
    every = points + along["points"]
    gain_along = matched_gain(every)
    compared_along = {arm: matched_difference(every, "full", arm, gain_along)
                      for arm in plan.SMOLLM2_ARMS if arm != "full"}
    return {"base_test_loss": base_loss, "matched_gain": gain, "compared": compared, "reference_texts": len(rows),
            "points": [{k: v for k, v in p.items() if k != "per_text"} for p in every],
            "along_training": {"steps": list(plan.SNAPSHOT_STEPS), "matched_gain": gain_along,
                               "compared": compared_along, "reproduced": along["reproduced"]}}


def snapshot_points(ctx: Context, units: dict, results: dict, files, base, tokenizer, rows: list[dict],
                    base_loss: float) -> dict:
    """The checkpoints along each run: every unit trained again keeping `study_plan.SNAPSHOT_STEPS` (cached like any
    unit), each snapshot's gain and per-text forgetting (`cached_snapshot`). ``reproduced``: the largest difference
    between a re-trained run's test loss and its end-only twin's (0 when training is deterministic, as on CPU)."""
    from loralab import data as datasets
    from loralab.tasks.batching import encode

    again = {key: plan.smollm2_unit(*key, files, snapshots=plan.SNAPSHOT_STEPS) for key in units}
    dirs = dict(zip(again, ctx.dirs(list(again.values()))))
    retrained = ctx.run(list(again.values()))
    test = encode(datasets.load_splits(files[0], 0, None, None, files[1], files[2])["test"], tokenizer,
                  plan.SMOLLM2_MAX_LENGTH)
    points = []
    bar = progress(len(again) * len(plan.SNAPSHOT_STEPS), "forgetting at the checkpoints along training")
    for (arm, lr, seed), unit in again.items():
        for step in plan.SNAPSHOT_STEPS:
            found = cached_snapshot(dirs[(arm, lr, seed)], step, base, rows, test, tokenizer.pad_token_id)
            bar.update()
            points.append({"arm": arm, "lr": lr, "seed": seed, "name": unit.name, "step": step, "end": False,
                           "trainable_params": retrained[unit.name].trainable_params, "test_loss": found["test_loss"],
                           "gain": base_loss - found["test_loss"], "forgetting": found["loss_increase"],
                           "kl": found["kl_base_tuned"], "per_text": found["per_text"]})
    bar.close()
    reproduced = max(abs(retrained[again[k].name].test["loss"] - results[units[k].name].test["loss"]) for k in units)
    return {"points": points, "reproduced": reproduced}


def cached_snapshot(run_dir: Path, step: int, base, rows: list[dict], test: list[dict], pad_id: int) -> dict:
    """`lm_forgetting` (per text) and the cipher test loss of a run's parameters after ``step``
    (`train.snapshots`), kept as JSON in the run's directory like `cached_forgetting`."""
    from loralab.analysis.forgetting import lm_forgetting
    from loralab.io.atomic import atomic_write_json
    from loralab.runs import load_snapshot
    from loralab.train.evaluate import evaluate

    path = run_dir / f"snapshot-{step}-{REFERENCE}-{reference_digest(rows)}.json"
    if path.exists():
        return json.loads(path.read_text())
    _, tuned, _, _, _ = load_snapshot(run_dir, step)
    with torch.no_grad():
        found = lm_forgetting(base, tuned, rows, pad_id, 8, per_text=True)
        found["test_loss"] = evaluate(tuned, test, "causal_lm", 0, pad_id, 16, progress=False)["loss"]
    atomic_write_json(path, found)
    return found


def reference_digest(rows: list[dict]) -> str:
    """12 hex digits of the reference set's token ids: cached forgetting names the texts it was measured on."""
    import hashlib

    return hashlib.sha256(json.dumps([r["input_ids"] for r in rows]).encode()).hexdigest()[:12]


def cached_forgetting(run_dir: Path, base, rows: list[dict], pad_id: int) -> dict:
    """`forgetting_of`, kept as JSON in the run's directory (one file per reference set, named by a hash of its
    token ids), so that a study re-read does not recompute it (≈ 1–2 min per SmolLM2 run on 2 cores)."""
    from loralab.io.atomic import atomic_write_json

    path = run_dir / f"forgetting-{REFERENCE}-{reference_digest(rows)}.json"
    if path.exists():
        return json.loads(path.read_text())
    found = forgetting_of(run_dir, base, rows, pad_id)
    atomic_write_json(path, found)
    return found


@torch.no_grad()
def forgetting_of(run_dir: Path, base, rows: list[dict], pad_id: int) -> dict:
    """`lm_forgetting` (per text) of one finished run's model against the base model."""
    from loralab.analysis.forgetting import lm_forgetting
    from loralab.runs import load_run

    _, tuned, _, _, _ = load_run(run_dir)
    return lm_forgetting(base, tuned, rows, pad_id, 8, per_text=True)


# ----- learning–forgetting curves --------------------------------------------------------------------
def forgetting_from(per_text: dict, picks: list[int]) -> float:
    """Token-weighted mean loss increase over the texts ``picks`` (a resample: repeats allowed)."""
    return sum(per_text["loss_increase"][i] for i in picks) / sum(per_text["tokens"][i] for i in picks)


def curve_at(points: list[tuple[float, float]], gain: float) -> Optional[float]:
    """Forgetting at ``gain`` on the curve through (gain, forgetting) ``points``, linear between neighbours;
    None outside the points' range (a curve is never extrapolated)."""
    points = sorted(points)
    if not points or gain < points[0][0] or gain > points[-1][0]:
        return None
    for (g0, f0), (g1, f1) in zip(points, points[1:]):
        if g0 <= gain <= g1:
            return f0 if g1 == g0 else f0 + (f1 - f0) * (gain - g0) / (g1 - g0)
    return points[-1][1]


def arm_at(points: list[dict], arm: str, gain: float, picks: Optional[list[int]] = None,
           seeds: Optional[list[int]] = None) -> Optional[float]:
    """An arm's forgetting at ``gain``: per seed from its curve over learning rates, then the mean over seeds
    (``seeds``: only these; None when a seed's curve does not reach ``gain``)."""
    values = []
    for seed in seeds or sorted({p["seed"] for p in points if p["arm"] == arm}):
        curve = [(p["gain"], p["forgetting"] if picks is None else forgetting_from(p["per_text"], picks))
                 for p in points if p["arm"] == arm and p["seed"] == seed]
        value = curve_at(curve, gain)
        if value is None:
            return None
        values.append(value)
    return statistics.fmean(values) if values else None


def matched_gain(points: list[dict]) -> Optional[float]:
    """The gain every arm's every seed reaches within its curve: the smallest of their highest gains, if it is not
    below any curve's lowest gain (else the arms learned too differently to be matched)."""
    curves = {}
    for p in points:
        curves.setdefault((p["arm"], p["seed"]), []).append(p["gain"])
    top, bottom = min(max(g) for g in curves.values()), max(min(g) for g in curves.values())
    return top if top >= bottom else None


def matched_difference(points: list[dict], first: str, second: str, gain: Optional[float], seed: int = 0) -> dict:
    """Forgetting of ``first`` minus ``second`` at ``gain``, with a 95% percentile interval from resampling the
    reference texts (`RESAMPLES` times; every run's forgetting recomputed on the same resample). The interval is
    the reference sample's uncertainty; the seeds' spread is given beside it (``per_seed``: the same difference
    from each seed's curves alone)."""
    if gain is None:
        return {"gain": None, "difference": None, "low": None, "high": None,
                "note": "no gain that every arm reaches: the curves do not overlap"}
    first_forgetting, second_forgetting = arm_at(points, first, gain), arm_at(points, second, gain)
    observed = first_forgetting - second_forgetting
    n = len(points[0]["per_text"]["tokens"])
    rng = random.Random(seed)
    draws = []
    for _ in range(RESAMPLES):
        picks = [rng.randrange(n) for _ in range(n)]
        draws.append(arm_at(points, first, gain, picks) - arm_at(points, second, gain, picks))
    draws.sort()
    return {"gain": gain, "first": first, "second": second, "difference": observed,
            "low": draws[int(0.025 * RESAMPLES)], "high": draws[int(0.975 * RESAMPLES) - 1], "resamples": RESAMPLES,
            "per_seed": {seed: arm_at(points, first, gain, seeds=[seed]) - arm_at(points, second, gain, seeds=[seed])
                         for seed in sorted({p["seed"] for p in points})},
            "first_forgetting": first_forgetting, "second_forgetting": second_forgetting}
