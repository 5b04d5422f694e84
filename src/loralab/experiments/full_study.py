"""``loralab study --full``: every claim of the seed material tested, with a verdict each, and one report.

The claims live in `claims_training` (1–5) and `claims_geometry` (6–11); each trains what it needs
through the shared `Context` (cached units, so a run two claims need is trained once, and a killed
study resumes where it stopped). A claim that fails to run is reported as such and the others go on.
Writes ``study.json``, ``report.md``, ``report.html`` (self-contained) and ``figures/*.png``.
"""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path
from typing import Optional, Sequence

from loralab.errors import ConfigError
from loralab.experiments import claims_geometry, claims_training  # noqa: F401 - registers the claims
from loralab.experiments import study_plan as plan
from loralab.experiments.context import CLAIMS, Context
from loralab.experiments.launcher import code_version, compute_used, make_executor
from loralab.io.atomic import atomic_write_text


def parse_list(text: Optional[str], kind, allowed: Sequence, flag: str) -> Optional[list]:
    if text is None:
        return None
    values = [kind(v.strip()) for v in text.split(",") if v.strip()]
    unknown = [v for v in values if v not in allowed]
    if unknown or not values:
        raise ConfigError(f"{flag} takes a comma-separated subset of {list(allowed)}; got {text!r}.")
    return values


def meta(ctx: Context, claims: list[int], started: float) -> dict:
    import torch

    from loralab import data as datasets

    return {"tasks": list(ctx.tasks), "seeds": list(ctx.seeds), "claims": claims, "sizes": vars(ctx.sizes),
            "model": "minilm (all-MiniLM-L6-v2)", "learning_rates": ctx.lr_table, "code_version": code_version(),
            "runs_trained_or_read": len(ctx.results), "wall_time_s": time.time() - started, "torch": torch.__version__,
            "compute": {**compute_used(ctx.results.values()), "workers": getattr(ctx.executor, "workers", None),
                        "trained": compute_used(ctx.results[n] for n in ctx.trained if n in ctx.results)},
            "test_examples": {t: len(datasets.load(t, "test", 0, ctx.sizes.max_eval)) for t in ctx.tasks}}


def evaluate_claims(ctx: Context, claims: list[int]) -> dict[int, dict]:
    outcomes = {}
    for number in claims:
        title = CLAIMS[number][0]
        print(f"claim {number}: {title}", flush=True)
        started = time.time()
        try:
            outcomes[number] = ctx.outcome(number)
        except Exception as err:  # noqa: BLE001 - a claim that cannot run is a result to report, not a crash
            outcomes[number] = {"claim": number, "title": title, "verdict": "not run",
                                "summary": f"{type(err).__name__}: {err}", "error": traceback.format_exc()[-4000:]}
        outcomes[number]["seconds"] = time.time() - started
        print(f"  → {outcomes[number]['verdict']}: {outcomes[number]['summary']}", flush=True)
    return outcomes


def carried_over(path: Path, ctx: Context, claims: list[int]) -> dict:
    """The claims an earlier study.json at ``path`` holds that this invocation does not redo, when it studied the
    same tasks, seeds and sizes — so ``--claims 9`` updates one claim of a full report rather than dropping the
    others — with that invocation's learning-rate grids and compute: {"claims": {number: outcome}, "learning_rates",
    "compute"}; else no claims."""
    if not path.exists():
        return {"claims": {}}
    try:
        earlier = json.loads(path.read_text())
        studied = {"tasks": list(ctx.tasks), "seeds": list(ctx.seeds), "sizes": vars(ctx.sizes)}
        same = all(earlier["meta"][key] == json.loads(json.dumps(value, default=str)) for key, value in studied.items())
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ConfigError(f"{path} is not a study.json this version reads; move it away (or choose another --out) "
                          "and run again.") from None
    if not same:
        print(f"{path}: an earlier study of other tasks, seeds or sizes; this one replaces it", flush=True)
        return {"claims": {}}
    kept = {n: c for n, c in earlier["claims"].items() if int(n) not in claims}
    return {"claims": kept, "learning_rates": earlier["meta"].get("learning_rates") or {},
            "compute": compute_behind(earlier["meta"])}


def compute_behind(meta: dict) -> Optional[dict]:
    """The compute behind an earlier study.json's claims: what it carried over plus the runs it trained itself
    (``compute.trained``); a file that carried none over counts all of its runs, one that does not say which runs
    it trained counts only what it carried."""
    carried, own = (meta.get("carried_over") or {}).get("compute"), meta.get("compute")
    if not carried or not own or "trained" not in own:
        return carried or own
    return {**carried, **{key: carried.get(key, 0) + own["trained"].get(key, 0) for key in ("runs", "run_hours", "resumed")}}


def run_full_study(out: str = "reports/full", runs: str = "runs/full_study", tasks: Optional[str] = None,
                   claims: Optional[str] = None, workers: int = 2, executor: str = "local",
                   address: Optional[str] = None, sizes: Optional[plan.Sizes] = None,
                   seeds: Sequence[int] = plan.SEEDS) -> dict:
    """Run the chosen claims (default: all) on the chosen tasks (default: all four); write the report. Every
    finished run is recorded in ``<out>/runs.jsonl`` (`launcher.Archive`): a claim that reads results only is
    answered from it even when ``runs`` is gone; a claim that reads weights trains its runs again."""
    started = time.time()
    task_list = parse_list(tasks, str, plan.TASKS, "--tasks") or list(plan.TASKS)
    claim_list = parse_list(claims, int, sorted(CLAIMS), "--claims") or sorted(CLAIMS)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = Context(tuple(task_list), tuple(seeds), Path(runs), out_dir, make_executor(executor, workers, address=address),
                  sizes or plan.Sizes(), archive=out_dir / "runs.jsonl")
    earlier = carried_over(out_dir / "study.json", ctx, claim_list)  # read first: a bad file stops before any run
    outcomes = evaluate_claims(ctx, claim_list)
    now = meta(ctx, claim_list, started)
    claims = {**earlier["claims"], **{str(n): outcomes[n] for n in claim_list}}
    if earlier["claims"]:
        now["carried_over"] = {"claims": sorted(map(int, earlier["claims"])), "compute": earlier["compute"]}
        now["claims"] = sorted(map(int, claims))
        now["learning_rates"] = {**earlier["learning_rates"], **now["learning_rates"]}  # the carried claims' grids
    study = {"meta": now, "claims": {n: claims[n] for n in sorted(claims, key=int)}}
    atomic_write_text(out_dir / "study.json", json.dumps(study, indent=1, default=str) + "\n")
    from loralab.experiments.study_report import write_report

    write_report(study, out_dir)
    print(f"wrote {out_dir / 'report.html'} and report.md ({study['meta']['wall_time_s'] / 60:.1f} min)")
    return study
