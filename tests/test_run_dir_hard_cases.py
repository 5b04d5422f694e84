"""Run directories under races, kills and odd file systems (issue 35: defects 5, 10, 11, 13, 14, 15).

Each test reproduces the defect an audit found and checks the behaviour now: nothing lost, a clear error,
or the run going on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loralab.cli import main
from loralab.rundir import RunDir
from loralab.train import run_dir
from loralab.train.config import TrainConfig
from test_run_safety import quick, run

pytestmark = pytest.mark.usefixtures("keep_threads")


def test_two_trains_started_together_do_not_break_the_winner(tiny, tmp_path, monkeypatch):
    """Defect 5: both processes saw --out missing, so the loser of the lock removed the winner's directory.
    Here the other process wins the race inside this one's mkdir: the loser is refused and the winner's
    directory and lock stay."""
    out = tmp_path / "race"
    real_mkdir = Path.mkdir
    winner = {}

    def racing_mkdir(self, *args, **kwargs):
        if self == out and "handle" not in winner:  # the other `loralab train` gets there first
            real_mkdir(self)
            winner["handle"] = run_dir.lock(self)
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", racing_mkdir)
    cfg = TrainConfig(model=tiny["model"], data=tiny["data"], out=str(out))
    with pytest.raises(Exception, match="is being written by another `loralab train`"):
        run_dir.create_out(cfg, out)
    assert out.is_dir() and (out / ".lock").exists()
    run_dir.release(winner["handle"])


def test_overwrite_deletes_only_a_run(tiny, tmp_path, capsys):
    """Defect 10: --overwrite emptied any directory (a thesis folder, also through a symlinked --out)."""
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "chapter1.tex").write_text("keep me")
    link = tmp_path / "link"
    link.symlink_to(thesis)
    for out in (thesis, link):
        code, _, err = run(quick(tiny, out, "--overwrite"), capsys)
        assert code == 2, err
        assert f"--out {out} holds files that are not a loralab run (['chapter1.tex']); --overwrite only ever " \
               "deletes a run directory. Give a new --out (nothing was deleted)." in err
    assert (thesis / "chapter1.tex").read_text() == "keep me"


def test_overwrite_removes_a_symlink_inside_a_run_not_its_target(tiny, tmp_path, capsys):
    """Defect 10: a run holding a symlink to a directory failed half-way ('Cannot call rmtree on a symbolic
    link'); the link goes, what it points to stays."""
    out = tmp_path / "run"
    assert main(quick(tiny, out)) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "data.txt").write_text("keep me")
    (out / "shortcut").symlink_to(elsewhere)
    assert run(quick(tiny, out, "--overwrite"), capsys)[0] == 0
    assert not (out / "shortcut").exists() and (elsewhere / "data.txt").read_text() == "keep me"


def test_a_half_written_metrics_line_does_not_block_resume(tiny, tmp_path, capsys):
    """Defect 11: a kill during a write to metrics.jsonl left half a line, and --resume ended in a JSONDecodeError."""
    out = tmp_path / "run"
    assert main(quick(tiny, out, "--epochs", "2")) == 0
    (out / "result.json").unlink()  # as if killed after the last checkpoint
    with open(out / "metrics.jsonl", "a") as handle:
        handle.write('{"type": "train", "step": 99, "lo')
    code, _, err = run(quick(tiny, out, "--epochs", "2", "--resume"), capsys)
    assert code == 0, err
    records = RunDir(out).metrics()
    assert records and all(isinstance(r, dict) for r in records)
    assert all(line.endswith("}") for line in (out / "metrics.jsonl").read_text().splitlines())


def test_stale_temporaries_are_cleaned_and_never_shipped(tmp_path):
    """Defect 13: a temporary left by a killed writer stayed forever and shipped inside adapter/. The next
    write of the same file removes those whose writer is dead; a live writer's is left alone."""
    from torch import nn

    import loralab as ll

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    stale = [adapter / f".adapter_model.safetensors.{dead}.abc123.tmp", adapter / f".adapter_config.json.{dead}.x.tmp"]
    live = adapter / f".adapter_config.json.{os.getppid()}.y.tmp"
    for path in (*stale, live):
        path.write_text("half written")
    model = nn.Sequential(nn.Linear(4, 3))
    ll.inject(model, ll.LoraConfig(r=2, targets=["0"]))
    ll.save_adapter(model, adapter)
    assert not any(p.exists() for p in stale) and live.exists()
    assert sorted(p.name for p in adapter.iterdir() if not p.name.startswith(".")) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors"]


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_written_files_follow_the_umask(tmp_path, mask):
    """Issue 34: every file was 0600 and every directory 0700 (mkstemp's modes), whatever the umask."""
    from loralab.io.atomic import atomic_directory, atomic_write_text

    old = os.umask(mask)
    try:
        atomic_write_text(tmp_path / "note.json", "{}")
        with atomic_directory(tmp_path / "model") as staging:
            (staging / "weights").write_text("w")
    finally:
        os.umask(old)
    assert (tmp_path / "note.json").stat().st_mode & 0o777 == 0o666 & ~mask
    assert (tmp_path / "model").stat().st_mode & 0o777 == 0o777 & ~mask


def test_killed_before_the_first_checkpoint_can_start_again(tiny, tmp_path, capsys):
    """Defect 14: a run killed before its first checkpoint left config.json and metrics.jsonl; --resume said
    'drop --resume' and without it 'not empty … add --resume' — only --overwrite worked. Both now start over."""
    for extra in ([], ["--resume"]):
        out = tmp_path / f"run{len(extra)}"
        out.mkdir()
        cfg = TrainConfig(model=tiny["model"], data=tiny["data"], out=str(out))
        (out / "config.json").write_text(json.dumps(cfg.to_dict()))
        (out / "metrics.jsonl").write_text("")
        code, _, err = run(quick(tiny, out, *extra), capsys)
        assert code == 0, err
        assert RunDir(out).result() is not None


def test_checkpoint_naming_a_file_outside_is_refused(tiny, tmp_path, capsys):
    """Defect 15: "tensor_file": "../../outside.safetensors" in checkpoint.json was followed on resume."""
    out = tmp_path / "run"
    assert main(quick(tiny, out, "--epochs", "2")) == 0
    (out / "result.json").unlink()
    state = out / "checkpoint" / "checkpoint.json"
    record = json.loads(state.read_text())
    (tmp_path / "outside.safetensors").write_bytes((out / "checkpoint" / record["tensor_file"]).read_bytes())
    record["tensor_file"] = "../../outside.safetensors"
    state.write_text(json.dumps(record))
    code, _, err = run(quick(tiny, out, "--epochs", "2", "--resume"), capsys)
    assert code == 2
    assert "names '../../outside.safetensors' as its tensor file; a checkpoint's tensors are " \
           "checkpoint-<step>.safetensors in the same directory." in err


def test_outputs_that_cannot_be_written_end_in_one_line(tiny, tmp_path, capsys, monkeypatch):
    """Issue 35, defect 12: a dangling-symlink --out, compose --out a symlink or on a read-only place, a full disk
    while a checkpoint is saved: one-line errors (tracebacks before), and the previous checkpoint intact."""
    import errno

    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    code, _, err = run(quick(tiny, dangling), capsys)
    assert code == 2 and f"--out {dangling} is a symbolic link to {tmp_path / 'nowhere'}, which does not exist" in err
    out = tmp_path / "run"
    assert main(quick(tiny, out, "--epochs", "2")) == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    link = tmp_path / "link"
    link.symlink_to(empty)
    code, _, err = run(["compose", out, "--method", "cat", "--head", "keep:0", "--out", link], capsys)
    assert code == 2 and f"--out {link} is a symbolic link (to {empty}); give the real directory" in err
    import loralab.io.atomic as atomic

    real, calls = atomic.atomic_write, []

    def full_disk_after_the_first_checkpoint(path, write):  # config.json, then checkpoint 1's tensors and JSON
        calls.append(path)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, write)

    fresh = tmp_path / "fresh"
    monkeypatch.setattr(atomic, "atomic_write", full_disk_after_the_first_checkpoint)
    code, _, err = run(quick(tiny, fresh, "--epochs", "2"), capsys)
    assert code == 2 and "cannot write" in err and "No space left on device" in err and "Traceback" not in err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("loralab train: error: cannot write")
    monkeypatch.setattr(atomic, "atomic_write", real)
    assert json.loads((fresh / "checkpoint" / "checkpoint.json").read_text())["step"] == 18  # epoch 1's, intact
    assert main(quick(tiny, fresh, "--epochs", "2", "--resume")) == 0
