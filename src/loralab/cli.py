"""The `loralab` command line: each command name maps to a plain function (the Python API)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Optional

COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], Callable[[argparse.ArgumentParser], None], str]] = {}


def command(name: str, help_text: str):
    """Register ``fn(args) -> exit code`` with an ``add_args(parser)`` companion."""

    def wrap(fn):
        COMMANDS[name] = (fn, getattr(fn, "add_args", lambda p: None), help_text)
        return fn

    return wrap


def info_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("adapter", help="a PEFT-format adapter directory (adapter_config.json + adapter_model.safetensors)")


def info(args: argparse.Namespace) -> int:
    """Print an adapter's config, parameter count and per-module ‖ΔW‖_F."""
    from loralab.analysis.summary import adapter_summary

    print(json.dumps(adapter_summary(args.adapter), indent=2))
    return 0


info.add_args = info_args
command("info", "config, parameter counts and per-layer ‖ΔW‖ of an adapter directory")(info)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loralab", description="Low-rank adaptation of pretrained transformers.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (fn, add_args, help_text) in COMMANDS.items():
        child = sub.add_parser(name, help=help_text, description=help_text)
        add_args(child)
        child.set_defaults(fn=fn)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from loralab.errors import AdapterError

    try:
        return args.fn(args)
    except AdapterError as err:
        print(f"loralab {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
