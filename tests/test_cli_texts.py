"""What a user reads: help texts and progress lines in a log file."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from loralab.cli import build_parser
from loralab.methods import method_names
from loralab.progress import PlainProgress


def help_text(command: str) -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return " ".join(sub.format_help().split())


def test_train_help_lists_every_registered_method():
    text = help_text("train")
    assert method_names() == ("full", "head", "lora", "dora", "did", "said")
    for name in method_names():
        assert f"{name}: " in text
    assert "(default: lora)" in text


def test_choices_are_in_the_usage_line():
    """As argparse shows them for its own choices: `--method {full,…}` rather than `--method METHOD`."""
    usage = help_text("train").split(" options: ")[0]
    for flag, values in (("--method", "full,head,lora,dora,did,said"), ("--init", "default,gaussian,pissa,olora"),
                         ("--scheduler", "linear,cosine,constant"), ("--precision", "fp32,bf16,fp16"),
                         ("--metric-for-best", "accuracy,macro_f1,loss")):
        assert f"[{flag} {{{values}}}]" in usage


def test_no_default_shown_twice_or_as_a_placeholder():
    text = help_text("train")
    assert "(default: None)" not in text and "(per method)" not in text
    threads = re.search(r"--threads THREADS (.*?) --", text).group(1)
    assert threads.count("default") == 0 and "torch's choice when not given" in threads
    assert "--dims DIMS" in help_text("intrinsic") and "--d D" not in help_text("intrinsic")


def test_version_names_loralab_torch_and_transformers(capsys):
    from importlib.metadata import version

    import loralab

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["--version"])
    assert exit_.value.code == 0
    printed = capsys.readouterr().out.strip()
    assert printed == f"loralab {version('loralab')} (torch {version('torch')}, transformers {version('transformers')})"
    assert loralab.__version__ == version("loralab")  # __init__ and pyproject agree


def test_plain_progress_prints_one_line_per_ten_percent():
    stream = io.StringIO()
    bar = PlainProgress(total=50, desc="lora minilm/movie", stream=stream)
    for _ in range(50):
        bar.update(1)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10
    assert lines[0].startswith("lora minilm/movie: 10% (5/50)") and "ETA" in lines[0]
    assert lines[-1].startswith("lora minilm/movie: 100% (50/50)")
    assert "\r" not in stream.getvalue() and "\x1b" not in stream.getvalue()


@pytest.mark.parametrize("initial", [0, 23])
def test_plain_progress_after_resume_starts_at_the_next_mark(initial):
    stream = io.StringIO()
    bar = PlainProgress(total=50, desc="x", initial=initial, stream=stream)
    for _ in range(50 - initial):
        bar.update(1)
    first = stream.getvalue().splitlines()[0]
    assert first.startswith("x: 10% (5/50)" if initial == 0 else "x: 50% (25/50)")


def documented_commands() -> list[tuple[str, str]]:
    """Every `loralab ...` line in a code block of the README and docs/ (``...`` and ``[ ]`` dropped)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    found = []
    for path in [root / "README.md", *sorted((root / "docs").rglob("*.md"))]:
        for block in re.findall(r"```[a-z]*\n(.*?)```", path.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split("  #")[0].strip()
                if line.startswith("loralab "):
                    found.append((path.name, line[len("loralab "):]))
                elif " -m loralab " in line:
                    found.append((path.name, line.split(" -m loralab ", 1)[1]))
    return found


def test_every_documented_command_line_parses():
    """A flag renamed in the CLI but not in the docs (or spelt so it is ambiguous) fails here."""
    import shlex

    commands = documented_commands()
    assert len(commands) >= 30
    parser = build_parser()
    for where, line in commands:
        argv = shlex.split(line.replace("...", "").replace("[", "").replace("]", ""))
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{where}: `loralab {line}` does not parse")


@pytest.mark.parametrize("argv, flag", [
    (["eval", "runs/x", "--max-eval", "0"], "--max-eval"),
    (["predict", "runs/x", "--text", "a", "--batch-size", "0"], "--batch-size"),
    (["predict", "runs/x", "--text", "a", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["forgetting", "runs/x", "--max-texts", "0"], "--max-texts"),
    (["forgetting", "runs/x", "--max-length", "-3"], "--max-length"),
    (["analyze", "runs/x", "--out", "a", "--intruder-k", "0"], "--intruder-k"),
    (["interference", "runs/a", "runs/b", "--out", "i", "--max-eval", "0"], "--max-eval"),
    (["study", "--workers", "0"], "--workers"),
])
def test_count_flags_refuse_zero_before_anything_runs(argv, flag, capsys):
    """Each of these ended in an IndexError, a ZeroDivisionError or a shape error deep in the work."""
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    value = argv[argv.index(flag) + 1]
    assert exit_.value.code == 2
    assert f"argument {flag}: must be an integer ≥ 1, got {value}" in capsys.readouterr().err


def test_probe_settings_are_checked_when_made():
    from loralab.commands.probe import ProbeConfig
    from loralab.errors import ConfigError

    for field, value, message in (("batches", 0, "--batches must be an integer ≥ 1, got 0."),
                                  ("head_steps", -1, "--head-steps must be an integer ≥ 0, got -1."),
                                  ("r", 0, "--r must be an integer ≥ 1, got 0."),
                                  ("energy", 1.5, "--energy is the fraction of the energy a rank must reach, in (0, 1]; "
                                                  "got 1.5.")):
        with pytest.raises(ConfigError) as err:
            ProbeConfig(**{field: value})
        assert str(err.value) == message


@pytest.mark.parametrize("argv", [["--version"], ["--help"], *([c, "--help"] for c in ("train", "probe", "compose", "eval",
                                                                              "analyze", "study"))])
def test_start_up_does_not_import_torch(argv):
    """`loralab --version` and `loralab train --help` start in a fraction of `import torch` (5.7–6.3 s here):
    only the command being run builds its flags, and the packages load their public names on first use."""
    code = ("import sys\nfrom loralab.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_the_version_is_written_once():
    """pyproject.toml reads the version from loralab.__version__; the installed metadata and --version agree."""
    from importlib.metadata import version

    import loralab

    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and not re.search(r"^version\s*=\s*\"", pyproject, re.M)
    assert version("loralab") == loralab.__version__
    done = subprocess.run([sys.executable, "-m", "loralab", "--version"], capture_output=True, text=True, timeout=120)
    assert done.stdout.startswith(f"loralab {loralab.__version__} ")
