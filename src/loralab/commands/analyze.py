"""``loralab analyze``: every measurement of this package on one or more runs or adapters.

    analyze(["runs/full", "runs/lora-r8", "runs/lora-r64"], out="analysis/")

For each source: per-layer spectra (`spectra`), amplification, intruder dimensions and ΔM/ΔD
(`geometry`), and the ΔM/ΔD trajectory if the run logged telemetry (``--analysis-every``). For
each pair of sources with layers in common: the φ grid of their input subspaces (`similarity`)
with the random baseline. Writes ``analysis.json``; `plots.write_report` adds PNGs and
``analysis.md``.
"""

from __future__ import annotations

import itertools
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Optional

import torch

from loralab.analysis import geometry, similarity, spectra
from loralab.analysis.updates import LayerUpdate, load_updates
from loralab.errors import ConfigError
from loralab.io.atomic import check_new_directory
from loralab.progress import progress
from loralab.rundir import RunDir


def source_labels(sources: list[str]) -> list[str]:
    """Each source's directory name (a run's, for its ``adapter/``), with as many parent directories as
    it takes to tell apart sources of one name (runs/a/x and runs/b/x: a/x and b/x)."""
    paths = [Path(s).resolve() for s in sources]
    paths = [RunDir.owning(p).path if RunDir.owning(p) else p for p in paths]
    for depth in range(1, max(len(p.parts) for p in paths) + 1):
        labels = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(labels)) == len(labels):
            return labels
    raise ConfigError(f"sources {sources} name the same directory more than once; give each once.")


class BaseSpectra:
    """W0's SVD per layer, computed once and shared by every source on the same base."""

    def __init__(self):
        self.cache: dict[tuple, spectra.SVD] = {}

    def get(self, path: str, base: torch.Tensor) -> spectra.SVD:
        key = (path, tuple(base.shape), float(base.double().norm()))
        if key not in self.cache:
            self.cache[key] = spectra.dense_svd(base)
        return self.cache[key]


def layer_report(update: LayerUpdate, svd: spectra.SVD, base_svd: Optional[spectra.SVD], rank: int,
                 intruder_k: int, epsilon: float) -> dict:
    row = {"rank": min(rank, *update.shape), "spectrum": spectra.summarize(svd)}
    if update.base is not None:
        tuned = update.tuned()
        row["amplification"] = geometry.amplification(update.base, svd, rank, w_svd=base_svd)
        row["intruders"] = geometry.intruder_dimensions(update.base, tuned, intruder_k, epsilon, base_u=base_svd.U)
        row["magnitude_direction"] = geometry.magnitude_direction(update.base, tuned)
    return row


def trajectory(source: str) -> list[dict]:
    """The telemetry records of a run's metrics.jsonl (empty when it logged none)."""
    return [r for r in RunDir(source).metrics() if r.get("type") == "analysis"]


def analyze_source(source: str, model: Optional[str], rank: Optional[int], bases: BaseSpectra,
                   intruder_k: int, epsilon: float) -> tuple[dict, dict[str, spectra.SVD], dict]:
    updates = load_updates(source, model)
    svds, layers = {}, {}
    for path, update in updates.items():
        svds[path] = update.svd()
        r = update.factors.rank if update.factors is not None else (rank or 8)
        base_svd = bases.get(path, update.base) if update.base is not None else None
        layers[path] = layer_report(update, svds[path], base_svd, r, intruder_k, epsilon)
    kind = "full" if any(u.dense is not None for u in updates.values()) else (
        "dora" if any(u.factors.magnitude is not None for u in updates.values()) else "lora")
    factors = {path: u.factors for path, u in updates.items() if u.factors is not None}
    report = {"source": str(source), "kind": kind, "layers": layers, "trajectory": trajectory(source),
              "summary": summarize_layers(layers)}
    if any(u.base is None for u in updates.values()):
        report["needs_base"] = NEEDS_BASE + (" DoRA's spectra here are of s·B·A, not of its whole weight change."
                                             if kind == "dora" else "")
    return report, svds, factors


NEEDS_BASE = ("The adapter names no base model, so only what its factors give is measured (spectra, effective rank, "
              "φ between sources); amplification, intruder dimensions and ΔM/ΔD need the base weights: give --model.")


def summarize_layers(layers: dict) -> dict:
    """Medians over layers of the headline numbers."""
    def median(getter):
        values = [getter(row) for row in layers.values() if getter(row) is not None]
        return statistics.median(values) if values else None

    return {
        "layers": len(layers),
        "k90_median": median(lambda r: r["spectrum"]["k90"]),
        "effective_rank_median": median(lambda r: r["spectrum"]["effective_rank"]),
        "amplification_median": median(lambda r: r.get("amplification", {}).get("amplification")),
        "intruders_total": sum(r.get("intruders", {}).get("count", 0) for r in layers.values()),
        "delta_m_median": median(lambda r: r.get("magnitude_direction", {}).get("delta_m")),
        "delta_d_median": median(lambda r: r.get("magnitude_direction", {}).get("delta_d")),
    }


def compare_sources(a: dict[str, spectra.SVD], b: dict[str, spectra.SVD], max_k: int = 64,
                    side: str = "input") -> Optional[dict]:
    """φ on one side ('input': ΔW's right singular vectors, A's row space for LoRA; 'output': the left ones, B's
    column space) for the layers both have: per layer, and the mean grid over layers."""
    shared = [p for p in a if p in b and a[p].shape == b[p].shape]
    if not shared:
        return None
    k1 = min(min(len(a[p].S) for p in shared), max_k)
    k2 = min(min(len(b[p].S) for p in shared), max_k)
    per_layer = {p: similarity.compare(a[p], b[p], side, k1, k2) for p in shared}
    mean = torch.tensor([per_layer[p]["phi"] for p in shared], dtype=torch.float64).mean(0)
    return {"layers": shared, "k1": k1, "k2": k2, "mean_phi": mean.tolist(),
            "baseline": per_layer[shared[0]]["baseline"],
            "top_phi": {p: per_layer[p]["top"] for p in shared}, "mean_top_phi": float(mean[0, 0]),
            "per_layer_phi": {p: per_layer[p]["phi"] for p in shared}}


def shared_start(first: dict, second: dict, layers: list[str]) -> list[str]:
    """The layers whose two adapters started from the same A rows (same seed: `similarity.started_together`);
    φ of their input subspaces is high there by construction, not because the updates learned alike."""
    return [p for p in layers if p in first and p in second and similarity.started_together(first[p], second[p])]


def check_settings(rank: Optional[int], intruder_k: int, epsilon: float) -> None:
    if rank is not None and rank < 1:
        raise ConfigError(f"--rank is how many top directions of a dense update amplification uses: ≥ 1, got {rank}.")
    if intruder_k < 1:
        raise ConfigError(f"--intruder-k is how many top singular vectors are checked for intruders: ≥ 1, got {intruder_k}.")
    if not 0 < epsilon < 1:
        raise ConfigError(f"--epsilon is a cosine threshold in (0, 1) (one of the tuned weight's top singular vectors whose "
                          f"best cosine to every base singular vector is below it is an intruder; default 0.5), got {epsilon}.")


def check_out(out: Path, overwrite: bool) -> Path:
    """``out`` as `analyze` may write it: new or empty, or a previous analysis when ``overwrite`` (never another
    directory: --overwrite deletes only what an analysis wrote)."""
    used = out.is_dir() and not out.is_symlink() and any(out.iterdir())
    if used and (out / "analysis.json").is_file():
        if overwrite:
            return out
        raise ConfigError(f"--out {out} holds a previous analysis; add --overwrite to replace it, or give a new "
                          "directory (nothing was written).")
    if used and overwrite:
        raise ConfigError(f"--out {out} is not empty and holds no analysis.json: --overwrite replaces only a "
                          "previous analysis. Give a new directory.")
    return check_new_directory(out)


def analyze(sources: list[str], out: str | Path, model: Optional[str] = None, names: Optional[list[str]] = None,
            rank: Optional[int] = None, intruder_k: int = 10, epsilon: float = 0.5, plots: bool = True,
            overwrite: bool = False) -> dict:
    """Measure every source, compare every pair, write analysis.json (and the report with ``plots``) into ``out``:
    a new or empty directory, or — with ``overwrite`` — a previous analysis, replaced as a whole (no plot of the
    old one is left beside the new). Checked before anything is measured."""
    check_settings(rank, intruder_k, epsilon)
    started = time.time()
    if names is not None and len(set(names)) < len(names):
        raise ConfigError(f"--names {','.join(names)} gives a label twice; every source needs its own.")
    out = check_out(Path(out), overwrite)
    names = names or source_labels(sources)
    bases, reports, svds, factors = BaseSpectra(), {}, {}, {}
    bar = progress(len(sources), "analyze")
    for name, source in zip(names, sources):
        reports[name], svds[name], factors[name] = analyze_source(source, model, rank, bases, intruder_k, epsilon)
        bar.update(1)
    bar.close()
    pairs = {}
    for first, second in itertools.combinations(names, 2):
        found = compare_sources(svds[first], svds[second])
        if found:
            pairs[f"{first} vs {second}"] = {"first": first, "second": second, **found,
                                             "shared_start": shared_start(factors[first], factors[second], found["layers"])}
    result = {"sources": reports, "pairs": pairs, "intruder_k": intruder_k, "epsilon": epsilon,
              "seconds": time.time() - started}
    if overwrite and out.is_dir():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "analysis.json").write_text(json.dumps(result, indent=1) + "\n")
    if plots:
        from loralab.commands.plots import write_report

        write_report(result, out)
    result["seconds"] = time.time() - started
    return result
