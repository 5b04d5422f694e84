"""The examples the README shows run as written."""

from __future__ import annotations

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


def test_readme_shows_the_example_file():
    readme = (ROOT / "README.md").read_text()
    body = (ROOT / "examples" / "quickstart.py").read_text()
    assert "examples/quickstart.py" in readme
    for line in ("ll.set_active(model, [\"sst\", \"other\"])", "ll.routing(model, [\"sst\", \"other\", \"__base__\"])"):
        assert line in body and line in readme


def test_hf_trainer_example_runs():
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "hf_trainer.py")], capture_output=True, text=True,
                          env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "12 adapted modules, e.g. bert.encoder.layer.0.attention.self.query" in proc.stdout  # q/v of 6 blocks
    assert "saved: ['adapter_config.json', 'adapter_model.safetensors']" in proc.stdout
    assert "reloaded adapter gives the same logits: True" in proc.stdout
