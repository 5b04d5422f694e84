"""The `loralab` command line. Each command is a plain function of the Python API (`COMMANDS`).

Config-shaped commands (``train``, ``intrinsic``) get one flag per dataclass field, with the
field's docstring line as help; ``train --config FILE`` reads the fields from JSON first.
Errors loralab raises on purpose print as one line and exit 2; Ctrl-C during ``train`` prints
where the last checkpoint is and the command that resumes it, and exits 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import os
import shlex
import sys
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Optional

from loralab.errors import ConfigError, LoralabError
from loralab.train.config import TrainConfig, field_help, flag_of

INTERRUPTED = 130
BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader went away
WRITE_ERRORS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EFBIG)


# ----- dataclass ↔ flags ---------------------------------------------------------------------------
def int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def positive(text: str) -> int:
    """argparse type of a count flag: an integer ≥ 1 (0 used to end in a traceback or in nothing measured)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer ≥ 1, got {value}")
    return value


def field_default(f):
    return f.default if f.default is not MISSING else (f.default_factory() if f.default_factory is not MISSING else None)


def add_dataclass_flags(parser: argparse.ArgumentParser, cls, extra_help: Optional[dict] = None, prefix: str = "",
                        flag_of=None, skip: tuple[str, ...] = ()) -> None:
    """One flag per field of ``cls`` (a nested dataclass field: one per field of it, named by ``flag_of``).
    Defaults are shown in the help but not set on ``args``, so `dataclass_values` can tell a given flag from
    an omitted one; ``dest`` is the field's dotted name (``lora.r``)."""
    helps = {**field_help(cls), **(extra_help or {})}
    for f in fields(cls):
        name = prefix + f.name
        if name in skip:
            continue
        if dataclasses.is_dataclass(f.default_factory if f.default_factory is not MISSING else None):
            group = parser.add_argument_group(f"{f.name} (methods {', '.join(methods_reading(f.name))})",
                                              helps.get(f.name, ""))
            add_dataclass_flags(group, f.default_factory, prefix=name + ".", flag_of=flag_of)
            continue
        flags = [flag_of(name) if flag_of else "--" + f.name.replace("_", "-")]
        flags += [alias for alias, field_name in FLAG_ALIASES.items() if field_name == name]
        default, text = field_default(f), helps.get(f.name, "")
        if f.type in ("bool", bool, "Optional[bool]"):
            parser.add_argument(*flags, dest=name, action="store_true", default=argparse.SUPPRESS, help=text)
            continue
        kind = {"int": int, "float": float, "Optional[int]": int, "Optional[float]": float,
                "list[int]": int_list}.get(str(f.type), str)
        if default is not None and default != {}:
            shown = ",".join(map(str, default)) if isinstance(default, list) else default
            text = f"{text} (default: {shown})"
        choices = CHOICES.get(name)
        metavar = "{" + ",".join(choices) + "}" if choices else f.name.upper()  # choices in the usage line, as argparse
        parser.add_argument(*flags, dest=name, type=kind, default=argparse.SUPPRESS, metavar=metavar, help=text)


def methods_reading(section: str) -> list[str]:
    from loralab.methods import get_method, method_names

    return [n for n in method_names() if section in get_method(n).config_fields]


FLAG_ALIASES = {"--r": "lora.r", "--d": "subspace.d"}  # the old short flags (torchrun swallows them: use --rank, --dim)


def choices_of() -> dict[str, tuple]:
    from loralab.adapters.config import INITS
    from loralab.methods import method_names
    from loralab.train import config

    return {"method": method_names(), "lora.init": INITS, "subspace.projection": config.PROJECTIONS,
            "scheduler": config.SCHEDULERS, "precision": config.PRECISIONS, "metric_for_best": config.METRICS}


CHOICES: dict[str, tuple] = {}


def dataclass_values(cls, args: argparse.Namespace, base: Optional[dict] = None) -> dict:
    """``base`` (e.g. a --config file) updated with the flags given on the command line; dotted flag
    destinations (``lora.r``) go into their section."""
    values = dict(base or {})
    for key, value in vars(args).items():
        section, _, leaf = key.partition(".")
        if leaf and section in {f.name for f in fields(cls)}:
            values[section] = {**(values.get(section) or {}), leaf: value}
        elif key in {f.name for f in fields(cls)}:
            values[key] = value
    return values


# ----- commands ------------------------------------------------------------------------------------
def train_flags(parser: argparse.ArgumentParser) -> None:
    from loralab.methods import get_method, method_names

    CHOICES.update(choices_of())
    listed = "; ".join(f"{n}: {get_method(n).summary}" for n in method_names())
    add_dataclass_flags(parser, TrainConfig, {"method": f"How to fine-tune — {listed}."}, flag_of=flag_of,
                        skip=("resume",))
    parser.add_argument("--resume", nargs="?", const=True, default=argparse.SUPPRESS, metavar="RUN",
                        help="continue the run in --out from its last checkpoint (the config must match); "
                             "--resume RUN reads the run's own config, so no other flag is needed")
    parser.add_argument("--config", help="a JSON or YAML file of these fields, sections as objects (lora: {r: 8}); "
                                         "flags given here override it")
    parser.add_argument("--snapshot-steps", metavar="STEPS",
                        help="keep the trainable parameters after these optimizer steps (e.g. 13,26) in "
                             "OUT/snapshots/step-N.safetensors, to measure along training (`train.snapshots`)")


def cmd_train(args: argparse.Namespace) -> int:
    from loralab.train import train
    from loralab.train.snapshots import Snapshots, parse_steps

    cfg = TrainConfig.from_dict(dataclass_values(TrainConfig, args, train_base(args)))
    callbacks = [Snapshots(parse_steps(args.snapshot_steps))] if args.snapshot_steps else []
    try:
        result = train(cfg, callbacks)
    except KeyboardInterrupt:
        print(interrupted_message(cfg, args.argv), file=sys.stderr)
        return INTERRUPTED
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one line for the run, not one per process
        test = {k: round(v, 4) if isinstance(v, float) else v for k, v in result.test.items()}
        print(json.dumps({"out": cfg.out, "trainable_params": result.trainable_params, "test": test,
                          "wall_time_s": round(result.wall_time_s, 1)}))
    return 0


def train_base(args: argparse.Namespace) -> Optional[dict]:
    """The fields a train command starts from: --config's, or with ``--resume RUN`` the run's own config."""
    resume = getattr(args, "resume", None)
    if isinstance(resume, str):
        if args.config:
            raise ConfigError(f"--resume {resume} reads that run's config; drop --config.")
        from loralab.rundir import RunDir

        saved = RunDir(resume).config()
        if saved is None:
            raise ConfigError(f"--resume {resume}: not a run directory (no readable config.json); give the --out of a "
                              "`loralab train` run, or --resume alone with --out.")
        args.resume = True
        return {**saved, "out": resume, "resume": True}
    return read_config_file(args.config)


def read_config_file(path: Optional[str]) -> Optional[dict]:
    """A --config file: JSON, or YAML (.yaml / .yml); sections as nested objects."""
    if path is None:
        return None
    yaml = Path(path).suffix.lower() in (".yaml", ".yml")
    try:
        text = Path(path).read_text(encoding="utf-8")
        if yaml:
            import yaml as pyyaml

            data = pyyaml.safe_load(text)
        else:
            data = json.loads(text)
    except ImportError:
        raise ConfigError(f"--config {path}: YAML needs PyYAML (pip install pyyaml), or give the config as JSON.") from None
    except Exception as err:  # noqa: BLE001 - JSON's ValueError, PyYAML's YAMLError, OSError; others raise
        if not isinstance(err, (OSError, ValueError)) and not type(err).__module__.startswith("yaml"):
            raise
        raise ConfigError(f"--config {path}: cannot read it as {'YAML' if yaml else 'JSON'} ({err}).") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected an object of train fields, got {type(data).__name__}.")
    return data


def interrupted_message(cfg: TrainConfig, argv: list[str]) -> str:
    """Where the last checkpoint is and the exact command that resumes from it."""
    from loralab.rundir import RunDir
    from loralab.train.checkpoint import STATE_FILE, has_checkpoint

    ckpt = RunDir(cfg.out).checkpoint
    if not has_checkpoint(ckpt):
        return ("loralab train: interrupted before the first checkpoint (one is written at the end of every epoch, "
                "or every --checkpoint-every N steps); nothing to resume. Run the same command again to start over.")
    step = json.loads((ckpt / STATE_FILE).read_text())["step"]
    command = [a for a in argv if a != "--overwrite"]
    command += [] if "--resume" in command else ["--resume"]
    return (f"loralab train: interrupted. The last checkpoint is {ckpt} (step {step}); continue with:\n"
            f"  loralab {shlex.join(command)}")


def run_flags(parser: argparse.ArgumentParser, required: bool) -> None:
    """A run directory, as ``RUN`` or ``--run RUN`` (both spellings work; `run_dir` reconciles them)."""
    parser.add_argument("run_positional", nargs="?", metavar="RUN", help="a `loralab train --out` directory")
    parser.add_argument("--run", help="the same as RUN")
    parser.set_defaults(run_required=required)


def run_dir(args: argparse.Namespace) -> Optional[str]:
    """The run directory given as RUN or --run; an error if both are given and differ, or none when required."""
    positional, flag = args.run_positional, args.run
    if positional and flag and Path(positional) != Path(flag):
        raise ConfigError(f"two run directories given: {positional} and --run {flag}; give one.")
    run = positional or flag
    if run is None and args.run_required:
        raise ConfigError("give the run directory: RUN or --run RUN (a `loralab train --out` directory).")
    return run


def paths_flags(parser: argparse.ArgumentParser, flag: str, help: str) -> None:
    """Directories given as arguments or after ``--<flag>`` (both spellings work; `paths` reconciles them)."""
    parser.add_argument("paths", nargs="*", metavar=flag.upper(), help=help)
    parser.add_argument(f"--{flag}", nargs="+", help=f"the same as {flag.upper()} …")


def paths(args: argparse.Namespace, flag: str) -> list[str]:
    """The directories given as arguments or after --<flag>; an error for both or for none."""
    positional, flagged = args.paths, getattr(args, flag)
    if positional and flagged:
        raise ConfigError(f"{flag} given twice: {' '.join(positional)} and --{flag} {' '.join(flagged)}; give them once.")
    if not (positional or flagged):
        raise ConfigError(f"give the {flag}: `loralab {args.command} DIR DIR … --out OUT` (or --{flag} DIR DIR …).")
    return positional or flagged


def eval_flags(parser: argparse.ArgumentParser) -> None:
    run_flags(parser, required=False)
    parser.add_argument("--model", help="model name or directory (with --data, without --run)")
    parser.add_argument("--adapter", help="a PEFT-format adapter directory to load on --model")
    parser.add_argument("--data", help="dataset name or file (with --run: evaluate the run on this data instead)")
    parser.add_argument("--seed", type=int, default=None, help="split seed (default: the run's, or 0)")
    parser.add_argument("--max-eval", type=positive, default=None, help="at most this many examples per split")


def cmd_eval(args: argparse.Namespace) -> int:
    from loralab import runs

    run = run_dir(args)
    if run:
        if args.model or args.adapter:
            raise ConfigError("RUN evaluates a finished run; --model and --adapter go without it.")
        result = runs.evaluate_run(run, data=args.data, seed=args.seed, max_eval=args.max_eval)
    elif args.model and args.data:
        result = runs.evaluate_adapter(args.model, args.data, args.adapter, seed=args.seed or 0, max_eval=args.max_eval)
    else:
        raise ConfigError("give a run directory (RUN or --run RUN), or --model and --data (and --adapter DIR) to evaluate.")
    print(json.dumps(result, indent=2))
    return 0


def predict_flags(parser: argparse.ArgumentParser) -> None:
    run_flags(parser, required=False)
    parser.add_argument("--model", help="instead of RUN: a model directory with a task head (e.g. from `loralab merge`), "
                                        "or any model with --adapter")
    adapter_flags(parser)
    parser.add_argument("--text", action="append", default=[], help="an input (repeat the flag for several)")
    parser.add_argument("--file", help="inputs: a .txt with one per line (- for standard input), or a .csv/.tsv/.jsonl "
                                       "with a text (sentence, prompt) column")
    parser.add_argument("--max-new-tokens", type=positive, default=64, help="causal LM: tokens to generate (default: 64)")
    parser.add_argument("--batch-size", type=positive, default=32, help="classification: texts per batch (default: 32)")
    parser.add_argument("--max-length", type=positive, default=None,
                        help="tokens per input (default: the run's --max-length; with --model: 128)")


def cmd_predict(args: argparse.Namespace) -> int:
    from loralab import data, runs

    texts, blank = data.read_input_file(args.file) if args.file else ([], [])
    if blank:  # one output line per input: say which input lines have none
        shown = ", ".join(map(str, blank[:10])) + (", …" if len(blank) > 10 else "")
        print(f"loralab predict: {args.file}: skipped {len(blank)} blank line(s) ({shown}); one output line per "
              "non-blank input line.", file=sys.stderr)
    inputs = [*args.text, *texts]
    for row in runs.predict(inputs, run=run_dir(args), model=args.model, max_new_tokens=args.max_new_tokens,
                            batch_size=args.batch_size, max_length=args.max_length, adapter=args.adapter,
                            labels=label_list(args)):
        print(json.dumps(row, ensure_ascii=False))
    return 0


def adapter_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", help="with --model: a PEFT-format adapter directory (e.g. from `loralab compose`) "
                                          "merged into the model first")
    parser.add_argument("--labels", help="with --adapter: comma-separated class names in the head's order (default: "
                                         "the model's, else LABEL_0, LABEL_1, …)")


def label_list(args: argparse.Namespace) -> Optional[list[str]]:
    if args.labels is not None and args.adapter is None:
        raise ConfigError("--labels names the classes of an --adapter's head; a run or a merged model has its own.")
    return None if args.labels is None else [name.strip() for name in args.labels.split(",")]


def merge_flags(parser: argparse.ArgumentParser) -> None:
    run_flags(parser, required=False)
    parser.add_argument("--model", help="instead of RUN: the base model an --adapter is merged into")
    adapter_flags(parser)
    parser.add_argument("--out", required=True, help="a new directory for the merged HF model (outside the run)")


def cmd_merge(args: argparse.Namespace) -> int:
    from loralab import runs

    run, labels = run_dir(args), label_list(args)
    if run and (args.model or args.adapter):
        raise ConfigError("RUN merges a finished run; --model and --adapter go without it.")
    if run:
        print(runs.merge_run(run, args.out))
    elif args.model and args.adapter:
        print(runs.merge_adapter(args.model, args.adapter, args.out, labels))
    else:
        raise ConfigError("give the run directory: RUN or --run RUN (a `loralab train --out` directory), or --model "
                          "and --adapter DIR.")
    return 0


def compare_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="run directories (`loralab train --out`), e.g. runs/*")
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON (every field of every run)")
    parser.add_argument("--sort", help="order the runs: test.METRIC or val.METRIC best first (e.g. test.accuracy, "
                                       "val.loss), or a setting (lr, r, seed, …), trainable, seconds, peak_mb ascending")


def cmd_compare(args: argparse.Namespace) -> int:
    from loralab import runs

    table = runs.compare_runs(args.runs)
    if args.sort:
        runs.sort_rows(table, args.sort)
    for path in table["skipped"]:
        print(f"loralab compare: skipped {path}: not a run directory (no `loralab train` config.json)", file=sys.stderr)
    print(json.dumps(table, indent=2, ensure_ascii=False) if args.json else runs.comparison_markdown(table))
    return 0


def forgetting_flags(parser: argparse.ArgumentParser) -> None:
    run_flags(parser, required=True)
    parser.add_argument("--on", help="dataset name or file whose test texts measure it (default: bbc, news prose; "
                                     "movie for a bbc run)")
    parser.add_argument("--max-texts", type=positive, default=60, help="texts from its test split (default: 60)")
    parser.add_argument("--max-length", type=positive, default=96, help="tokens per text (default: 96)")
    parser.add_argument("--batch-size", type=positive, default=16, help="texts per forward pass (default: 16)")


def cmd_forgetting(args: argparse.Namespace) -> int:
    from loralab.commands.forgetting import run_forgetting

    result = run_forgetting(run_dir(args), on=args.on, max_texts=args.max_texts, max_length=args.max_length,
                            batch_size=args.batch_size)
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


def info_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("adapter", help="a PEFT-format adapter directory (adapter_config.json + adapter_model.safetensors), "
                                        "or a LoRA/DoRA run (its adapter/)")
    parser.add_argument("--model", help="the base model (needed for DoRA's ΔW; default: the adapter's base_model_name_or_path)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON (config, parameters, per-module "
                                                            "kind, rank, scaling, dora, delta_norm)")


def cmd_info(args: argparse.Namespace) -> int:
    from loralab.commands.compose import adapter_dir
    from loralab.commands.info import adapter_summary, summary_text

    directory = adapter_dir(args.adapter)
    summary = adapter_summary(directory, model=args.model)
    print(json.dumps(summary, indent=2, ensure_ascii=False) if args.json else summary_text(summary, str(directory)))
    return 0


def study_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--full", action="store_true",
                        help="run every claim on four tasks with seeds (hours); default: the quick study (claim 1)")
    parser.add_argument("--claims", help="with --full: comma-separated claim numbers 1-11 (default: all); the other "
                        "claims of an earlier study.json in --out (same tasks, seeds, sizes) are kept")
    parser.add_argument("--tasks", help="with --full: comma-separated subset of movie,tweets,trec,sms (default: all)")
    parser.add_argument("--workers", type=positive, default=None,
                        help="runs at a time, cores split between them (default: 2 with --full, else 1)")
    parser.add_argument("--executor", default="local", choices=("local", "ray", "inline"),
                        help="local worker processes, Ray (pip install 'loralab[ray]'), or inline: one run after "
                             "another in this process, for debugging (default: local)")
    parser.add_argument("--address", help="with --executor ray: the cluster address (default: a local Ray)")
    parser.add_argument("--out", default=None, help="report directory (default: reports, or reports/full)")
    parser.add_argument("--runs", default=None, help="run directories (default: runs/study, or runs/full_study)")
    parser.add_argument("--model", default=None,
                        help="quick study: model name or local HF directory (default: minilm)")
    parser.add_argument("--data", default=None,
                        help="quick study: classification dataset name or CSV/TSV/JSONL file (default: movie)")
    parser.add_argument("--max-train", type=positive, default=None, help="quick study: training examples per run")
    parser.add_argument("--epochs", type=positive, default=None, help="quick study: epochs per run")
    parser.add_argument("--seed", type=int, default=None, help="quick study: seed (default: 0)")
    parser.add_argument("--precision", default=None, choices=("fp32", "bf16"),
                        help="quick study: fp32, or bf16 autocast (default: fp32)")


QUICK_STUDY_FLAGS = ("model", "data", "max_train", "epochs", "seed", "precision")


def cmd_study(args: argparse.Namespace) -> int:
    quick = {name: getattr(args, name) for name in QUICK_STUDY_FLAGS if getattr(args, name) is not None}
    if args.full:
        if quick:
            given = ", ".join(f"--{name.replace('_', '-')}" for name in quick)
            raise ConfigError(f"{given} set the quick study; the full study fixes model, data, sizes and "
                              "seeds per claim (docs/study/report.md). Drop them, or drop --full.")
        from loralab.experiments.full_study import run_full_study

        run_full_study(out=args.out or "reports/full", runs=args.runs or "runs/full_study", tasks=args.tasks,
                       claims=args.claims, workers=args.workers or 2, executor=args.executor, address=args.address)
        return 0
    if args.claims or args.tasks:
        raise ConfigError("--claims and --tasks choose parts of the full study; add --full.")
    from loralab.experiments.launcher import make_executor
    from loralab.experiments.study import run_study

    executor = make_executor(args.executor, args.workers or 1, address=args.address)
    run_study(out=args.out or "reports", runs_dir=args.runs or "runs/study", executor=executor, **quick)
    return 0


def intrinsic_flags(parser: argparse.ArgumentParser) -> None:
    from loralab.experiments.d90_sweep import SweepConfig

    add_dataclass_flags(parser, SweepConfig)


def cmd_intrinsic(args: argparse.Namespace) -> int:
    from loralab.experiments.d90_sweep import SweepConfig, run_sweep

    run_sweep(SweepConfig(**dataclass_values(SweepConfig, args)))
    return 0


def analyze_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", help="runs (`loralab train --out`) or adapter directories (ours or PEFT's)")
    parser.add_argument("--out", required=True, help="where to write analysis.json, analysis.md and the plots")
    parser.add_argument("--model", help="the base model (default: each run's model or adapter's base_model_name_or_path)")
    parser.add_argument("--names", help="comma-separated labels for the sources (default: their directory names, with "
                                        "parent directories where two share a name)")
    parser.add_argument("--rank", type=positive, default=None,
                        help="top directions for amplification of dense updates (default: 8; adapters use their rank)")
    parser.add_argument("--intruder-k", type=positive, default=10,
                        help="top singular vectors checked for intruders (default: 10)")
    parser.add_argument("--epsilon", type=float, default=0.5, help="intruder cosine threshold (default: 0.5)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a previous analysis in --out (a non-empty --out is refused otherwise)")


def cmd_analyze(args: argparse.Namespace) -> int:
    from loralab.commands.analyze import analyze

    names = args.names.split(",") if args.names else None
    if names and len(names) != len(args.sources):
        raise ConfigError(f"--names gives {len(names)} labels for {len(args.sources)} sources; give one per source.")
    result = analyze(args.sources, args.out, model=args.model, names=names, rank=args.rank,
                     intruder_k=args.intruder_k, epsilon=args.epsilon, overwrite=args.overwrite)
    print(json.dumps({name: report["summary"] for name, report in result["sources"].items()}, indent=2))
    print(f"wrote {Path(args.out) / 'analysis.md'} ({result['seconds']:.1f} s)")
    return 0


def probe_flags(parser: argparse.ArgumentParser) -> None:
    from loralab.commands.probe_config import ProbeConfig

    add_dataclass_flags(parser, ProbeConfig)
    parser.add_argument("--json", action="store_true",
                        help="print the recommendation, predicted ranks and train commands as JSON")


def cmd_probe(args: argparse.Namespace) -> int:
    from loralab.commands.probe import ProbeConfig, probe_summary, probe_text, write_probe

    cfg = ProbeConfig(**dataclass_values(ProbeConfig, args))
    result = write_probe(cfg)
    print(json.dumps(probe_summary(cfg, result), indent=2, ensure_ascii=False) if args.json else probe_text(cfg, result))
    return 0


def compose_flags(parser: argparse.ArgumentParser) -> None:
    from loralab.commands.compose_config import METHODS

    paths_flags(parser, "adapters", "adapter directories (or runs), ours or PEFT's")
    parser.add_argument("--weights", nargs="+", type=float, default=None,
                        help="one weight per adapter; negative subtracts (default: all 1)")
    parser.add_argument("--method", default="svd", choices=METHODS,
                        help="cat: exact, rank Σr; svd: exact sum re-ranked by a small SVD; ties, dare: on ΔW, re-factored "
                             "(default: svd)")
    parser.add_argument("--rank", type=int, default=None, help="rank of the result (svd, ties, dare)")
    parser.add_argument("--energy", type=float, default=None, help="or keep this fraction of Σσ² per layer (svd, ties, dare)")
    parser.add_argument("--head", default=None, help="modules_to_save heads: sum, keep:N or none (required when present)")
    parser.add_argument("--density", type=float, default=0.2, help="TIES: fraction of entries kept (default: 0.2)")
    parser.add_argument("--drop", type=float, default=0.5, help="DARE: drop probability (default: 0.5)")
    parser.add_argument("--seed", type=int, default=0, help="DARE's masks (default: 0)")
    parser.add_argument("--out", required=True, help="a new directory for the combined adapter")


def cmd_compose(args: argparse.Namespace) -> int:
    from loralab.commands.compose import compose

    adapters = paths(args, "adapters")
    weights = args.weights or [1.0] * len(adapters)
    if args.method in ("ties", "dare") and args.rank is None and args.energy is None:
        raise ConfigError(f"--method {args.method} re-factors a dense ΔW: give --rank R or --energy E.")
    report = compose(adapters, weights, args.out, method=args.method, rank=args.rank, energy=args.energy,
                     head=args.head, density=args.density, drop=args.drop, seed=args.seed)
    print(json.dumps({k: report[k] for k in ("method", "weights", "max_relative_error")} |
                     {"ranks": sorted(set(report["ranks"].values())), "out": args.out}))
    return 0


def interference_flags(parser: argparse.ArgumentParser) -> None:
    paths_flags(parser, "runs", "LoRA runs trained on different tasks")
    parser.add_argument("--out", required=True, help="where to write interference.json/.md/.png")
    parser.add_argument("--max-eval", type=positive, default=None, help="test examples per task (default: each run's)")


def cmd_interference(args: argparse.Namespace) -> int:
    from loralab.experiments.interference import run_interference

    result = run_interference(paths(args, "runs"), args.out, args.max_eval)
    print((Path(args.out) / "interference.md").read_text())
    print(f"({result['seconds']:.0f} s)")
    return 0


COMMANDS = {
    "train": (cmd_train, train_flags, "fine-tune a model: full, lora, dora, did or said"),
    "eval": (cmd_eval, eval_flags, "validation and test metrics of a run, or of a model plus an adapter"),
    "predict": (cmd_predict, predict_flags, "labels with probabilities, or generated answers, for new inputs (JSON lines)"),
    "merge": (cmd_merge, merge_flags, "merge a run's update (or a PEFT adapter: --model, --adapter) into a plain Hugging "
                                        "Face model directory"),
    "compare": (cmd_compare, compare_flags, "runs side by side: the settings that differ, parameters, metrics, time; "
                                            "unfinished runs and where they stopped"),
    "info": (cmd_info, info_flags, "config, parameter count and per-layer ‖ΔW‖ of an adapter directory"),
    "study": (cmd_study, study_flags, "the quick study (claim 1 on MiniLM/movie), or --full: every claim, with a report"),
    "intrinsic": (cmd_intrinsic, intrinsic_flags, "intrinsic dimension: SAID/DID sweep over d and seeds, d90 and a plot"),
    "analyze": (cmd_analyze, analyze_flags, "spectra, subspace similarity, amplification, intruders, ΔM/ΔD of updates"),
    "forgetting": (cmd_forgetting, forgetting_flags, "what a run forgot: next-token loss and KL against its base "
                                                     "(causal LM), or CKA drift per layer (classifier), on other text"),
    "probe": (cmd_probe, probe_flags, "predict the rank a task needs from the pretrained model, before training"),
    "compose": (cmd_compose, compose_flags, "combine adapters exactly (cat, svd) or by TIES/DARE into one adapter"),
    "interference": (cmd_interference, interference_flags, "what combining task adapters costs, with the geometry"),
}


def version_line() -> str:
    """loralab's version and the torch / transformers it runs with (what a bug report needs)."""
    from importlib.metadata import PackageNotFoundError, version

    import loralab

    def installed(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "not installed"

    return f"loralab {loralab.__version__} (torch {installed('torch')}, transformers {installed('transformers')})"


class VersionAction(argparse.Action):
    """``--version``: prints `version_line` — looked up only when asked for, not on every command."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, help="print the versions of loralab, torch and transformers")

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_line())
        parser.exit()


def build_parser(flags_for: Optional[set[str]] = None) -> argparse.ArgumentParser:
    """The command-line parser; with ``flags_for``, only those commands get their flags (the others would import
    what they need only to list their flags: `main` builds the one command it runs, so start-up stays short)."""
    parser = argparse.ArgumentParser(
        prog="loralab", description="Low-rank adaptation of pretrained transformers, and measurements of why it works.",
        epilog="`loralab COMMAND --help` explains each command's flags.",
    )
    parser.add_argument("--version", action=VersionAction)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, add_flags, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if flags_for is None or name in flags_for:
            add_flags(command)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    named = next((a for a in given if not a.startswith("-")), None)
    args = build_parser({named} if named in COMMANDS else set()).parse_args(given)
    args.argv = given
    try:
        return COMMANDS[args.command][0](args)
    except LoralabError as err:
        print(f"loralab {args.command}: error: {err.rendered(flag_of)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"loralab {args.command}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:  # whoever read stdout stopped (`loralab info RUN | head`): end quietly, as `cat` does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes at exit
        return BROKEN_PIPE
    except OSError as err:
        if err.errno not in WRITE_ERRORS:
            raise
        where = f" {err.filename}" if err.filename else ""
        print(f"loralab {args.command}: error: cannot write{where}: {os.strerror(err.errno)}. Nothing was changed "
              "there (what was written before stays as it was); free space or choose another place.", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
