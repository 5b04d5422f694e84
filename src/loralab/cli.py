"""The `loralab` command line. Each command is a plain function of the Python API:

=========  ===========================================  =================================
command    what it does                                 function
=========  ===========================================  =================================
train      fine-tune (full, lora, dora)                 `loralab.train.train`
eval       metrics of a run, or of model + adapter      `loralab.runs.evaluate_run` / `evaluate_adapter`
merge      a run's adapter merged into a plain HF dir   `loralab.runs.merge_run`
info       an adapter's config and per-layer ‖ΔW‖       `loralab.analysis.summary.adapter_summary`
study      the main study (full FT vs LoRA vs DoRA)     `loralab.study.run_study`
intrinsic  d90 sweep: SAID/DID over d and seeds         `loralab.subspace.sweep.run_sweep`
=========  ===========================================  =================================
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import MISSING, fields
from typing import Optional

from loralab.errors import AdapterError, DataError, TrainingError
from loralab.train.config import TrainConfig, field_help


def add_config_flags(parser: argparse.ArgumentParser, cls=TrainConfig, skip=()) -> None:
    """One flag per dataclass field, with the field's docstring line as help."""
    helps = field_help(cls)
    for f in fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        if f.type in ("bool", bool):
            parser.add_argument(flag, action="store_true", help=helps.get(f.name, ""))
            continue
        kind = {"int": int, "float": float, "Optional[int]": int, "Optional[float]": float}.get(str(f.type), str)
        default = "(per method)" if f.name == "targets" else default
        parser.add_argument(flag, type=kind, default=None if default == "(per method)" else default,
                            metavar=f.name.upper(),
                            help=f"{helps.get(f.name, '')} (default: {default})")


def config_from_args(args: argparse.Namespace, cls=TrainConfig):
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})


def cmd_train(args: argparse.Namespace) -> int:
    from loralab.train import train

    result = train(config_from_args(args))
    test = {k: round(v, 4) if isinstance(v, float) else v for k, v in result["test"].items()}
    print(json.dumps({"out": args.out, "trainable_params": result["trainable_params"], "test": test,
                      "wall_time_s": round(result["wall_time_s"], 1)}))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from loralab import runs

    if args.run:
        result = runs.evaluate_run(args.run)
    elif args.model and args.data:
        result = runs.evaluate_adapter(args.model, args.data, args.adapter, seed=args.seed, max_eval=args.max_eval)
    else:
        raise DataError("give --run DIR, or --model and --data (and --adapter DIR) to evaluate.")
    print(json.dumps(result, indent=2))
    return 0


def eval_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", help="a `loralab train --out` directory")
    parser.add_argument("--model", help="model name or directory (with --data)")
    parser.add_argument("--adapter", help="a PEFT-format adapter directory to load on --model")
    parser.add_argument("--data", help="dataset name or file (with --model)")
    parser.add_argument("--seed", type=int, default=0, help="split seed (default: 0)")
    parser.add_argument("--max-eval", type=int, default=None, help="at most this many examples per split")


def cmd_merge(args: argparse.Namespace) -> int:
    from loralab import runs

    print(runs.merge_run(args.run, args.out))
    return 0


def merge_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="a `loralab train --out` directory")
    parser.add_argument("--out", required=True, help="where to write the merged HF model directory")


def cmd_info(args: argparse.Namespace) -> int:
    from loralab.analysis.summary import adapter_summary

    print(json.dumps(adapter_summary(args.adapter), indent=2))
    return 0


def info_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("adapter", help="a PEFT-format adapter directory (adapter_config.json + adapter_model.safetensors)")


def cmd_study(args: argparse.Namespace) -> int:
    from loralab.study import run_study

    run_study(out=args.out, runs_dir=args.runs, max_train=args.max_train, epochs=args.epochs, seed=args.seed)
    return 0


def study_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="reports", help="report directory (default: reports)")
    parser.add_argument("--runs", default="runs/study", help="run directories (default: runs/study)")
    parser.add_argument("--max-train", type=int, default=None, help="training examples per run (default: the study's)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the study's)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default: 0)")


def cmd_intrinsic(args: argparse.Namespace) -> int:
    from loralab.subspace.sweep import SweepConfig, run_sweep

    values = {f.name: getattr(args, f.name) for f in fields(SweepConfig) if getattr(args, f.name, None) is not None}
    for name in ("dims", "seeds"):
        if isinstance(values.get(name), str):
            try:
                values[name] = [int(v) for v in values[name].split(",") if v.strip()]
            except ValueError:
                raise DataError(f"--{'d' if name == 'dims' else name} takes comma-separated integers, "
                                f"got {values[name]!r}.") from None
    run_sweep(SweepConfig(**values))
    return 0


def intrinsic_flags(parser: argparse.ArgumentParser) -> None:
    from loralab.subspace.sweep import SweepConfig

    helps = field_help(SweepConfig)
    for f in fields(SweepConfig):
        flag = "--d" if f.name == "dims" else "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else f.default_factory()
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        kind = {"int": int, "float": float, "Optional[int]": int}.get(str(f.type), str)
        parser.add_argument(flag, dest=f.name, type=kind, default=None, metavar=f.name.upper(),
                            help=f"{helps.get(f.name, '')} (default: {shown})")


COMMANDS = {
    "train": (cmd_train, add_config_flags, "fine-tune a model: full, lora or dora"),
    "eval": (cmd_eval, eval_flags, "validation and test metrics of a run, or of a model plus an adapter"),
    "merge": (cmd_merge, merge_flags, "merge a run's adapter into a plain Hugging Face model directory"),
    "info": (cmd_info, info_flags, "config, parameter count and per-layer ‖ΔW‖ of an adapter directory"),
    "study": (cmd_study, study_flags, "the main study: full FT vs LoRA vs DoRA on MiniLM/movie, with a report"),
    "intrinsic": (cmd_intrinsic, intrinsic_flags, "intrinsic dimension: SAID/DID sweep over d and seeds, d90 and a plot"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loralab", description="Low-rank adaptation of pretrained transformers, and measurements of why it works.",
        epilog="`loralab COMMAND --help` explains each command's flags.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, add_flags, help_text) in COMMANDS.items():
        child = sub.add_parser(name, help=help_text, description=help_text)
        add_flags(child)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command][0](args)
    except (AdapterError, DataError, TrainingError) as err:
        print(f"loralab {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
