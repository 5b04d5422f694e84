"""The examples the README shows run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from test_training import ENV

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_example_runs():
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py")], capture_output=True, text=True,
                          env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trainable, total: (74498, 22788484)" in proc.stdout  # r=8 on query/value plus the 2-class head
    assert "stacked" in proc.stdout


def test_readme_shows_the_example_file_as_is():
    """The README's Python block is the example's code after its docstring, so a copy of it runs too."""
    readme = (ROOT / "README.md").read_text()
    shown = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    body = (ROOT / "examples" / "quickstart.py").read_text()
    code = body.split('"""', 2)[2].lstrip("\n")
    assert "examples/quickstart.py" in readme
    assert shown == code


def test_hf_trainer_example_runs():
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "hf_trainer.py")], capture_output=True, text=True,
                          env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "12 adapted modules, e.g. bert.encoder.layer.0.attention.self.query" in proc.stdout  # q/v of 6 blocks
    # the checkpoint holds the adapter (PEFT format, with its card) and the tokenizer — not model.safetensors
    held = re.search(r"checkpoint holds: (\[.*\])", proc.stdout).group(1)
    assert "'adapter_config.json', 'adapter_model.safetensors'" in held and "model.safetensors'" not in \
        held.replace("adapter_model.safetensors'", "")
    assert "reloaded adapter gives the same logits: True" in proc.stdout
