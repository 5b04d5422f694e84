"""Run many trainings as cached units, in parallel worker processes or on a Ray cluster.

An experiment describes each training it needs as a `Unit` (a readable name and a full
`TrainConfig`) and hands the list to `run_units`. Every unit trains in its own process
(``loralab train --config``), so its peak memory and thread count are its own. Its run
directory is ``<root>/<name>-<key>``, where the key hashes everything that changes the result
(the config and the code version of the training path, `code_version`). Hence:

* a unit whose directory holds ``result.json`` is not run again;
* a unit killed half-way resumes from its last checkpoint (``--resume``);
* changing a learning rate, a seed or the training code makes a new directory, never a mix;
* the key names a local data file by its content (sha256), not its path, so the same run keeps its key in
  another checkout or run root.

An experiment may keep an **archive**: a JSONL file, one line per finished unit (its directory name, key, the
machine it trained on and its result.json), written as each unit ends. A unit found there is read back, not
trained, even when its run directory is gone — so a long benchmark whose results are committed survives the
loss of its run root.

Executors: ``local`` runs ``workers`` units at a time on this machine, splitting its cores
between them; ``ray`` submits each unit as a Ray task (``ray.init(address)`` when an address
is given, a local Ray otherwise; the run root must be on storage every node sees); ``inline``
trains them one after another in this process (the same training of the same config into the same
run directories, without starting a process — seconds of imports per unit; for debugging and
tiny models).
"""

from __future__ import annotations

import ast
import concurrent.futures
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Optional

from loralab.errors import ConfigError, TrainingError
from loralab.io.atomic import atomic_write_text
from loralab.progress import progress
from loralab.rundir import RunDir, RunResult
from loralab.train.config import RESUME_MAY_CHANGE, TrainConfig

# Where the training path starts: everything these import (transitively, within loralab) decides what a run computes.
TRAINING_ENTRY = ("loralab.train.loop", "loralab.methods", "loralab.train.telemetry", "loralab.train.trackers")
DYNAMIC_PACKAGES = ("loralab.methods",)


@dataclass(frozen=True)
class Unit:
    """One training run of an experiment."""

    name: str  # readable, unique within the experiment, e.g. "movie-lora-r8-s0"
    config: TrainConfig  # ``out`` is chosen by `run_units`
    snapshots: tuple[int, ...] = ()  # optimizer steps whose parameters the run keeps (`train.snapshots`)


def code_version(entries: tuple[str, ...] = TRAINING_ENTRY) -> str:
    """12 hex digits fixed by the code of every module on the training path (`training_modules`; or on the path
    from other ``entries``) — its syntax tree, so docstrings, comments and formatting do not count — and the torch
    and transformers versions."""
    from importlib.metadata import PackageNotFoundError, version

    digest = hashlib.sha256()
    for name, path in training_modules(entries):
        digest.update(name.encode())
        digest.update(ast.dump(without_docstrings(ast.parse(path.read_text()))).encode())
    for package in ("torch", "transformers"):
        try:
            digest.update(f"{package} {version(package)}".encode())
        except PackageNotFoundError:
            digest.update(f"{package} none".encode())
    return digest.hexdigest()[:12]


def training_modules(entries: tuple[str, ...] = TRAINING_ENTRY) -> list[tuple[str, Path]]:
    """(module name, source file) of every loralab module ``entries`` (by default `TRAINING_ENTRY`) are or import,
    directly or not (imports inside functions included), sorted by name."""
    root = Path(__file__).resolve().parents[1]  # src/loralab

    def source(name: str) -> Optional[Path]:
        parts = name.split(".")[1:]
        for candidate in (root.joinpath(*parts).with_suffix(".py"), root.joinpath(*parts, "__init__.py")):
            if candidate.exists():
                return candidate
        return None

    found: dict[str, Path] = {}
    todo = list(entries) + ["loralab"]
    while todo:
        name = todo.pop()
        path = source(name)
        if name in found or path is None:
            continue
        found[name] = path
        todo += [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]  # its parent packages
        if name in DYNAMIC_PACKAGES:  # a registry that imports every module of its package at run time
            todo += [f"{name}.{p.stem}" for p in path.parent.glob("*.py") if p.stem != "__init__"]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names if a.name.startswith("loralab")]
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("loralab"):
                todo += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return sorted(found.items())


def without_docstrings(tree: ast.AST) -> ast.AST:
    """The tree with every module, class and function docstring removed."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return tree


DATA_FIELDS = ("data", "val_data", "test_data")


def file_digest(path: str) -> str:
    """``sha256:<hex>`` of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def unit_key(cfg: TrainConfig, version: str) -> str:
    """10 hex digits fixed by every result-changing field of ``cfg`` and the code version: not the fields a resume
    may change, not the sections the run's method does not read, and local data files by content, not path."""
    skipped = set(RESUME_MAY_CHANGE) | cfg.ignored_fields()
    fields = {k: v for k, v in cfg.to_dict().items() if k not in skipped}
    if Path(cfg.model).exists():  # a local model directory: by its absolute path (hashing its weights costs too much)
        fields["model"] = str(Path(cfg.model).resolve())
    for name in DATA_FIELDS:
        if fields.get(name) and Path(fields[name]).is_file():
            fields[name] = file_digest(fields[name])
    return hashlib.sha256(json.dumps([fields, version], sort_keys=True).encode()).hexdigest()[:10]


def unit_dir(root: Path, unit: Unit, version: str) -> Path:
    """``<root>/<name>-<key>``; a unit that keeps snapshots has a key of its own (its directory holds more than the
    same run's without them)."""
    key = unit_key(unit.config, version)
    if unit.snapshots:
        key = hashlib.sha256(f"{key} snapshots {sorted(unit.snapshots)}".encode()).hexdigest()[:10]
    return root / f"{unit.name}-{key}"


def train_in_subprocess(cfg_dict: dict, log_path: str, snapshots: tuple[int, ...] = ()) -> dict:
    """Train one unit in a fresh ``loralab train`` process (resuming a killed one), keeping the parameters after
    the optimizer steps ``snapshots`` (`train.snapshots`); return its result.json.

    Runs in whichever process the executor uses (a thread of this one, or a Ray worker).
    """
    return _train_unit(cfg_dict, log_path, snapshots, _train_in_a_new_process)


def train_in_this_process(cfg_dict: dict, log_path: str, snapshots: tuple[int, ...] = ()) -> dict:
    """`train_in_subprocess`, but `train.train` runs in this process, its output to the log (it sets torch's
    thread count; `InlineExecutor` puts it back). A failure raises its own error; Ctrl-C stops the caller too."""
    return _train_unit(cfg_dict, log_path, snapshots, _train_here)


def _train_in_a_new_process(cfg: dict, snapshots: tuple[int, ...], log) -> int:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(cfg, handle)
    try:
        keep = ["--snapshot-steps", ",".join(map(str, snapshots))] if snapshots else []
        return subprocess.call([sys.executable, "-m", "loralab", "train", "--config", handle.name, *keep], stdout=log,
                               stderr=subprocess.STDOUT, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    finally:
        os.unlink(handle.name)


def _train_here(cfg: dict, snapshots: tuple[int, ...], log) -> int:
    from loralab.train import train
    from loralab.train.config import TrainConfig
    from loralab.train.snapshots import Snapshots

    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        train(TrainConfig.from_dict(cfg), [Snapshots(snapshots)] if snapshots else [])
    return 0


def _train_unit(cfg_dict: dict, log_path: str, snapshots: tuple[int, ...], launch) -> dict:
    """Train one unit through ``launch(config, snapshots, log)`` (its exit code), resuming a killed run and starting
    over a directory left without a checkpoint; return its result.json, or raise with the log's tail."""
    from loralab.train.checkpoint import has_checkpoint

    run = RunDir(cfg_dict["out"])
    out = run.path
    if run.result() is not None:
        return run.result().to_dict()
    resume = has_checkpoint(run.checkpoint)
    with open(log_path, "a") as log:
        code = launch({**cfg_dict, "resume": resume, "overwrite": out.exists() and not resume}, snapshots, log)
    result = run.result()
    if code != 0 or result is None:
        tail = Path(log_path).read_text()[-1500:]
        raise TrainingError(f"run {out.name} failed (exit code {code}); its log is {log_path}:\n{tail}")
    return result.to_dict()


class LocalExecutor:
    """``workers`` units at a time on this machine, each with cores // workers threads."""

    kind = "local"  # the --executor value that makes one

    def __init__(self, workers: int = 1, threads: Optional[int] = None):
        if workers < 1:
            raise ConfigError(f"--workers must be ≥ 1, got {workers}.")
        self.workers = workers
        self.threads = threads or (max(1, (os.cpu_count() or 1) // workers) if workers > 1 else None)

    def submit_all(self, jobs: list[tuple[dict, str, tuple[int, ...]]]):
        pool = concurrent.futures.ThreadPoolExecutor(self.workers)
        futures = [pool.submit(train_in_subprocess, *job) for job in jobs]
        pool.shutdown(wait=False)
        return futures, concurrent.futures.as_completed

    def submit_calls(self, fn, jobs: list[tuple]):
        """``fn(*job)`` for each job in ``workers`` processes of this machine (``fn`` importable, e.g. a module's
        function; it sets its own thread count); returns (futures, as_completed) as `submit_all` does."""
        pool = concurrent.futures.ProcessPoolExecutor(self.workers)
        futures = [pool.submit(fn, *job) for job in jobs]
        pool.shutdown(wait=False)
        return futures, concurrent.futures.as_completed


class RayExecutor:
    """Each unit is a Ray task needing ``threads`` CPUs; Ray schedules them over the cluster.

    The cluster: ``address`` (``--address``, e.g. ``auto`` or ``ray://head:10001``), else ``RAY_ADDRESS``, else
    one already running on this machine (``ray start --head``), else a local Ray started here. Every node
    needs loralab and the data packages installed, and the run root on storage all nodes see
    (docs/training.md, "Ray").
    """

    kind = "ray"

    def __init__(self, workers: int = 1, threads: Optional[int] = None, address: Optional[str] = None):
        try:
            import ray
        except ImportError:
            raise ConfigError("--executor ray needs Ray: pip install 'loralab[ray]'.") from None
        self.ray = ray
        if not ray.is_initialized():
            connect(ray, address or os.environ.get("RAY_ADDRESS"))
        self.threads = threads or max(1, (os.cpu_count() or 1) // max(workers, 1))
        self.remote = ray.remote(num_cpus=self.threads)(train_in_subprocess)

    def submit_all(self, jobs: list[tuple[dict, str, tuple[int, ...]]]):
        refs = [self.remote.remote(*job) for job in jobs]
        futures = [ref.future() for ref in refs]
        return futures, concurrent.futures.as_completed

    def submit_calls(self, fn, jobs: list[tuple]):
        """``fn(*job)`` for each job as a Ray task needing ``threads`` CPUs (``fn`` importable on every node)."""
        remote = self.ray.remote(num_cpus=self.threads)(fn)
        futures = [remote.remote(*job).future() for job in jobs]
        return futures, concurrent.futures.as_completed


def connect(ray, address: Optional[str]) -> None:
    """Join the cluster at ``address`` or one running on this machine; start a local Ray when there is none.
    (Ray refuses num_cpus when joining a cluster, so it is given only to a Ray started here.)"""
    quiet = {"include_dashboard": False, "log_to_driver": False}
    if address:
        try:
            ray.init(address=address, **quiet)
        except ConnectionError as err:
            raise ConfigError(f"--address {address}: no Ray cluster answers there ({err}); start one with "
                              "`ray start --head` or give its address.") from None
        return
    try:
        ray.init(address="auto", **quiet)  # a cluster this machine belongs to (ray start --head / --address)
    except ConnectionError:
        ray.init(num_cpus=os.cpu_count(), **quiet)


class InlineExecutor:
    """Every unit in this process, one after another, each when `as_completed` reaches it (``workers`` is
    ignored): no process start per unit, and a debugger sees the training. ``threads`` as for ``local``."""

    kind = "inline"
    workers = 1

    def __init__(self, workers: int = 1, threads: Optional[int] = None):
        self.threads = threads

    def submit_all(self, jobs: list[tuple[dict, str, tuple[int, ...]]]):
        return self.submit_calls(train_in_this_process, jobs)

    def submit_calls(self, fn, jobs: list[tuple]):
        """``fn(*job)`` for each job, run here as the returned `as_completed` iterates (torch's thread count, which
        ``fn`` may set, is restored after each)."""
        futures = [concurrent.futures.Future() for _ in jobs]

        def as_completed(_futures):
            import torch

            for future, job in zip(futures, jobs):
                threads = torch.get_num_threads()
                try:
                    future.set_result(fn(*job))
                except Exception as err:  # noqa: BLE001 - the caller reads it from the future, as from a worker's
                    future.set_exception(err)
                finally:
                    torch.set_num_threads(threads)
                yield future

        return futures, as_completed


EXECUTORS = {"local": LocalExecutor, "ray": RayExecutor, "inline": InlineExecutor}


def make_executor(kind: str = "local", workers: int = 1, threads: Optional[int] = None,
                  address: Optional[str] = None):
    if kind not in EXECUTORS:
        raise ConfigError(f"--executor must be one of {tuple(EXECUTORS)}, got {kind!r}.")
    if kind == "ray":
        return RayExecutor(workers, threads, address)
    return EXECUTORS[kind](workers, threads)


def machine_kind() -> str:
    """The CPU a run trained on, e.g. "Intel(R) Xeon(R) Processor, native bf16": machines differ between sessions,
    and float rounding (GEMM kernels) with them, so the archive records it beside each result."""
    from loralab.train.devices import native_bf16

    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown CPU")
    return f"{model}, {'native bf16' if native_bf16() else 'no native bf16'}"


def run_records(path: Path) -> list[dict]:
    """The records of a JSONL run archive, each with its "run" and "result"; a line that is not one is named, with
    the fix."""
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or not {"run", "result"} <= record.keys():
            raise ConfigError(f"{path}, line {number}: not a run record ({line[:80]!r}); "
                              "remove the line or the file (its runs will be trained again).")
        records.append(record)
    return records


class Archive:
    """A JSONL file of finished units, one line each, appended as each unit ends: ``{"run": <directory name>,
    "key": …, "machine": `machine_kind` of this process, "result": <result.json>}``. ``None`` as the path: none."""

    def __init__(self, path: Optional[str | Path]):
        self.path = Path(path) if path else None
        self.machine = machine_kind()  # recorded with the runs this process adds (read-back ones keep theirs)
        self.results: dict[str, dict] = {}
        self.machines: dict[str, str] = {}  # run → the machine it trained on, as recorded
        for record in run_records(self.path) if self.path and self.path.exists() else []:
            self.results[record["run"]] = record["result"]
            self.machines[record["run"]] = record.get("machine", "not recorded")

    def get(self, run: str) -> Optional[RunResult]:
        found = self.results.get(run)
        return RunResult.from_dict(found) if found is not None else None

    def add(self, run: str, result: RunResult) -> None:
        if self.path is None or run in self.results:
            return
        self.results[run], self.machines[run] = result.to_dict(), self.machine
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as handle:
            handle.write(json.dumps({"run": run, "key": run.rsplit("-", 1)[-1], "machine": self.machine,
                                     "result": self.results[run]}, sort_keys=True) + "\n")


def rekey_archive(path: Path, old: str, new: str) -> int:
    """Rename every run of a JSONL archive keyed ``old`` (a name ending ``-<old>``, and its ``key``) to ``new``,
    atomically; return how many. For a change to code that names runs but not what they compute — and only after
    one archived run, trained again under ``new``, has given the same result (docs/study/rank/README.md, session 20)."""
    lines, renamed = [], 0
    for record in run_records(path):
        if record["run"].endswith(f"-{old}"):
            record["run"] = record["run"][: -len(old)] + new
            record.update({"key": new} if "key" in record else {})
            renamed += 1
        lines.append(json.dumps(record))  # the fields in the line's own order
    atomic_write_text(path, "\n".join(lines) + "\n")
    return renamed


def finished_result(out: Path, archive: Archive) -> Optional[RunResult]:
    """A unit's result: its run directory's result.json, else the archive's record, else None."""
    return RunDir(out).result() or archive.get(out.name)


def run_units(units: Iterable[Unit], root: str | Path, executor=None, desc: str = "runs",
              archive: "Optional[str | Path | Archive]" = None, trained: Optional[set] = None) -> dict[str, RunResult]:
    """Train every unit not yet finished under ``root`` (or recorded in ``archive``, see `Archive`); return
    {unit name: its `RunResult`}.

    Finished units are read back, not run; every result, trained or read, is added to the archive. The names of the
    units this call trains are added to ``trained`` (what a report counts as compute spent now, not read back). A
    failed unit does not stop the others; the first failure is raised once every unit has ended.
    """
    units = list(units)
    names = [u.name for u in units]
    if len(set(names)) != len(names):
        raise ConfigError(f"unit names must be unique; repeated: {sorted({n for n in names if names.count(n) > 1})}")
    root = Path(root)
    (root / "logs").mkdir(parents=True, exist_ok=True)
    executor = executor or LocalExecutor()
    version = code_version()
    archive = archive if isinstance(archive, Archive) else Archive(archive)
    results, jobs, pending, dirs = {}, [], [], {}
    for unit in units:
        out = dirs[unit.name] = unit_dir(root, unit, version)
        finished = finished_result(out, archive)
        if finished is not None:
            results[unit.name] = finished
            archive.add(out.name, finished)
            continue
        cfg = replace(unit.config, out=str(out.resolve()), threads=executor.threads, resume=False, overwrite=False)
        jobs.append((cfg.to_dict(), str((root / "logs" / f"{out.name}.log").resolve()), unit.snapshots))
        pending.append(unit.name)
    if jobs:
        print(f"{desc}: {len(results)} of {len(units)} already done; running {len(jobs)}", flush=True)
        if trained is not None:
            trained.update(pending)
        results.update(_collect(executor, jobs, pending, desc, lambda name, result: archive.add(dirs[name].name, result)))
    return {name: results[name] for name in names}


def _collect(executor, jobs: list, pending: list[str], desc: str, on_result=lambda name, result: None) -> dict[str, RunResult]:
    futures, as_completed = executor.submit_all(jobs)
    name_of = {id(f): n for f, n in zip(futures, pending)}
    bar = progress(len(futures), desc)
    done, failures = {}, []
    for future in as_completed(futures):
        try:
            name = name_of[id(future)]
            done[name] = RunResult.from_dict(future.result())
            on_result(name, done[name])
        except Exception as err:  # noqa: BLE001 - reported below, after the other runs end
            failures.append(err)
        bar.update(1)
    bar.close()
    if failures:
        raise failures[0] if isinstance(failures[0], TrainingError) else TrainingError(str(failures[0]))
    return done


def compute_used(results: Iterable[RunResult]) -> dict:
    """The machine time behind a set of runs: how many, and the sum of their own wall clocks in hours (each on its
    share of the cores; with ``w`` workers on one machine, elapsed time ≈ that sum / w). A run resumed from a
    checkpoint counts the segment its result.json records."""
    results = list(results)
    return {"runs": len(results), "run_hours": sum(r.wall_time_s for r in results) / 3600,
            "resumed": sum(1 for r in results if r.resumed_from_step)}

