"""A run is never lost or mixed up: --out, --resume, --overwrite, merge --out, eval flags, Ctrl-C.

Each test reproduces a way the old command line lost or mixed up work, then checks the new
behaviour: a refusal whose message names the problem and the fix, and nothing changed on disk.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from loralab.cli import main
from loralab.train.config import TrainConfig
from test_training import ENV, adapter_tensors, train_args

pytestmark = pytest.mark.usefixtures("keep_threads")


def quick(tiny, out, *extra):
    """A one-epoch tiny run's arguments (18 optimizer steps)."""
    return train_args(tiny, out, "--epochs", "1", *extra)


def run(args, capsys):
    """(exit code, stdout, stderr) of `loralab ARGS` run in this process."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def listing(path: Path) -> dict[str, float]:
    return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in sorted(path.rglob("*"))}


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory):
    """One finished tiny LoRA run (shared, read-only)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(quick(tiny, out)) == 0
    return out


def test_existing_out_is_refused_and_untouched(tiny, finished, capsys):
    before = listing(finished)
    code, _, err = run(quick(tiny, finished, "--method", "full"), capsys)
    assert code == 2
    assert f"--out {finished} is not empty (it holds ['adapter', 'checkpoint', 'config.json', 'metrics.jsonl', " \
           "'result.json']); give a new --out, add --resume to continue the run there, or --overwrite" in err
    assert listing(finished) == before


def test_overwrite_clears_the_old_run_first(tiny, finished, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(quick(tiny, out)) == 0
    assert run(quick(tiny, out, "--method", "full", "--overwrite"), capsys)[0] == 0
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "config.json", "metrics.jsonl", "model", "result.json"]
    assert json.loads((out / "result.json").read_text())["method"] == "full"
    config = json.loads((out / "model" / "config.json").read_text())  # the saved model names its classes
    assert config["id2label"] == {"0": "negative", "1": "positive"} and config["label2id"]["positive"] == 1


@pytest.mark.parametrize("bad, message", [
    (("--max-length", "4096"), "--max-length 4096 is more than model "),
    (("--max-length", "129"), "takes (128 tokens); use --max-length 128 or less."),
    (("--targets", "nosuch"), "no module matches targets=['nosuch']"),
    (("--targets", "query,valeu"), "--targets entries ['valeu'] match no module in this model (spelt right?); the "
                                   "others match 2, e.g. ['bert.encoder.layer.0.attention.self.query', "),
    (("--data", "nosuch.csv"), "nosuch.csv"),
])
def test_refused_overwrite_leaves_the_old_run_untouched(tiny, finished, bad, message, tmp_path, capsys):
    """--overwrite deletes the old run only once the new one's data, model and targets have loaded."""
    old = shutil.copytree(finished, tmp_path / "run")
    before = listing(old)
    code, _, err = run(quick(tiny, old, "--overwrite", *bad), capsys)
    assert code == 2 and message in err
    assert before and listing(old) == before


def test_resume_refuses_a_different_config(tiny, finished, capsys):
    before = listing(finished)
    code, _, err = run(quick(tiny, finished, "--resume", "--lr", "1e-2", "--r", "4", "--threads", "2"), capsys)
    assert code == 2
    assert (f"--resume: the run in {finished} was started with a different config (--rank was 8, now 4; --lr was "
            "0.005, now 0.01; --threads was 1, now 2). Resume with the original values, or start a new run with a new "
            "--out.") in err
    assert listing(finished) == before


def test_resume_may_change_logging_not_threads(tiny, finished, tmp_path, capsys):
    """A run stopped after its last checkpoint (no result.json), resumed with other --log-every, re-tests it and
    reproduces its result; another --threads is refused (torch's GEMMs round differently at another count)."""
    out = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(finished), str(out)], check=True)
    (out / "config.json").write_text((finished / "config.json").read_text().replace(str(finished), str(out)))
    (out / "result.json").unlink()
    code, _, err = run(quick(tiny, out, "--resume", "--threads", "2", "--log-every", "3"), capsys)
    assert code == 2 and "--threads was 1, now 2" in err
    code, _, _ = run(quick(tiny, out, "--resume", "--log-every", "3"), capsys)
    assert code == 0
    assert json.loads((out / "result.json").read_text())["test"] == json.loads((finished / "result.json").read_text())["test"]


def test_resume_of_a_finished_run_changes_nothing(tiny, finished, capsys):
    """It re-tested the run and rewrote result.json with the re-test's seconds as the run's wall time, and
    appended a second test record; a sweep rerun with --resume must leave finished runs as they are."""
    before = {p.relative_to(finished): p.read_bytes() for p in finished.rglob("*") if p.is_file()}
    code, out, err = run(quick(tiny, finished, "--resume"), capsys)
    assert code == 0 and f"loralab train: {finished} had already finished; nothing to resume, nothing was changed." in err
    result = json.loads((finished / "result.json").read_text())
    assert json.loads(out)["test"] == {k: round(v, 4) if isinstance(v, float) else v for k, v in result["test"].items()}
    assert {p.relative_to(finished): p.read_bytes() for p in finished.rglob("*") if p.is_file()} == before


def test_resume_without_a_checkpoint_is_refused(tiny, tmp_path, capsys):
    code, _, err = run(quick(tiny, tmp_path / "typo", "--resume"), capsys)
    assert code == 2
    assert f"--resume: {tmp_path / 'typo'} has no checkpoint to resume from (is --out spelled right?). To start a new " \
           "run there, drop --resume." in err
    assert not (tmp_path / "typo").exists()


def test_failed_run_leaves_no_directory(tiny, tmp_path, capsys):
    code, _, err = run(quick(tiny, tmp_path / "bad", "--targets", "q_proj"), capsys)
    assert code == 2 and "no module matches targets=['q_proj']" in err
    assert not (tmp_path / "bad").exists()


def test_out_that_is_a_file(tiny, tmp_path, capsys):
    afile = tmp_path / "afile.txt"
    afile.write_text("keep me")
    code, _, err = run(quick(tiny, afile), capsys)
    assert code == 2 and f"--out {afile} is a file; give a directory for the run" in err
    assert afile.read_text() == "keep me"
    code, _, err = run(quick(tiny, afile / "run"), capsys)
    assert code == 2 and f"--out {afile / 'run'}: {afile} is a file, so the run directory cannot be made there" in err


def test_out_that_is_unwritable(tiny, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.access(locked, os.W_OK):
        pytest.skip("running as a user who can write anywhere")
    code, _, err = run(quick(tiny, locked / "run"), capsys)
    assert code == 2 and f"cannot write in {locked}" in err


@pytest.mark.parametrize("where", ["non-empty", "run-itself", "inside-run", "a-file"])
def test_merge_out_refusals(tiny, finished, tmp_path, where, capsys):
    target = {"non-empty": tmp_path / "mine", "run-itself": finished, "inside-run": finished / "merged",
              "a-file": tmp_path / "afile.txt"}[where]
    if where == "non-empty":
        target.mkdir()
        (target / "notes.txt").write_text("mine")
    if where == "a-file":
        target.write_text("mine")
    before = listing(tmp_path), listing(finished)
    code, _, err = run(["merge", "--run", finished, "--out", target], capsys)
    assert code == 2
    expected = {"non-empty": f"--out {target} is not empty; give a new directory",
                "run-itself": f"--out {target} is the run directory {finished}, inside it or above it",
                "inside-run": f"--out {target} is the run directory {finished}, inside it or above it",
                "a-file": f"--out {target} is a file; give a new directory"}[where]
    assert expected in err
    assert (listing(tmp_path), listing(finished)) == before


def test_merge_writes_a_whole_directory(finished, tmp_path, capsys):
    assert run(["merge", "--run", finished, "--out", tmp_path / "merged"], capsys)[0] == 0
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in (tmp_path / "merged").iterdir()}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_eval_honours_data_seed_and_max_eval(tiny, finished, tmp_path, capsys):
    code, out, _ = run(["eval", "--run", finished, "--max-eval", "5", "--seed", "3"], capsys)
    assert code == 0 and json.loads(out)["test"]["n"] == 5
    other = tmp_path / "three.csv"
    other.write_text("text,label\n" + "".join(f"row {i},{'abc'[i % 3]}\n" for i in range(60)))
    code, _, err = run(["eval", "--run", finished, "--data", other], capsys)
    assert code == 2 and (f"--data {other} has labels ['a', 'b', 'c']; run {finished} was trained for labels "
                          "['negative', 'positive']. Evaluate on a dataset with the same labels.") in err
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps({"prompt": f"q{i}", "response": f"a{i}"}) + "\n" for i in range(40)))
    code, _, err = run(["eval", "--run", finished, "--data", chat], capsys)
    assert code == 2 and (f"--data {chat} is prompt/response data; run {finished} was trained on classification "
                          "data with labels ['negative', 'positive']. Evaluate on data of the run's kind.") in err


def test_run_directory_as_positional_or_flag(finished, tmp_path, capsys):
    by_flag = run(["eval", "--run", finished, "--max-eval", "6"], capsys)
    by_position = run(["eval", finished, "--max-eval", "6"], capsys)
    assert by_flag[0] == by_position[0] == 0 and json.loads(by_flag[1]) == json.loads(by_position[1])
    code, _, err = run(["eval", finished, "--run", tmp_path / "other"], capsys)
    assert code == 2 and f"two run directories given: {finished} and --run {tmp_path / 'other'}; give one." in err
    code, _, err = run(["merge", "--out", tmp_path / "m"], capsys)
    assert code == 2 and "give the run directory: RUN or --run RUN" in err and not (tmp_path / "m").exists()
    assert run(["merge", finished, "--out", tmp_path / "merged"], capsys)[0] == 0
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    code, _, err = run(["eval", finished / "adapter"], capsys)
    assert code == 2 and f"{finished / 'adapter'} is an adapter directory, not a run: give its run directory" in err


def test_info_reads_a_run_or_its_adapter(finished, capsys):
    by_run, by_adapter = run(["info", finished, "--json"], capsys), run(["info", finished / "adapter", "--json"], capsys)
    assert by_run[0] == by_adapter[0] == 0 and json.loads(by_run[1]) == json.loads(by_adapter[1])
    summary = json.loads(by_run[1])
    assert summary["config"]["r"] == json.loads((finished / "config.json").read_text())["lora"]["r"]
    assert summary["modules"] and all(m["delta_norm"] > 0 for m in summary["modules"].values())
    code, text, _ = run(["info", finished], capsys)  # for people: the config in a few lines, one row per module
    lines = text.splitlines()
    assert code == 0 and lines[0] == (f"{finished / 'adapter'}: LoRA, 4 adapted modules, {summary['parameters']:,} "
                                      f"parameters in {summary['tensors']} tensors")
    assert lines[1] == "r 8, alpha 16 (scale alpha/r), dropout 0, init default"
    assert lines[2] == f"base model: {summary['base_model']}" and summary["base_model"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[lines.index("") + 2:]}
    assert list(rows) == list(summary["modules"])
    for path, (kind, rank, scale, norm) in rows.items():
        assert (kind, int(rank), float(scale)) == ("linear", 8, 2.0)
        assert float(norm) == pytest.approx(summary["modules"][path]["delta_norm"], rel=1e-3)


def test_output_into_a_closed_pipe_ends_quietly(finished):
    """`loralab info RUN | head -1` when head has already gone: no traceback, exit status 141 (128 + SIGPIPE)."""
    code = ("import os, sys\nfrom loralab.cli import main\nread, write = os.pipe()\nos.close(read)\n"
            f"os.dup2(write, 1)\nsys.exit(main(['info', {str(finished)!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert (proc.returncode, proc.stderr) == (141, "")


def test_adapter_commands_on_a_run_without_an_adapter(tiny, tmp_path, capsys):
    out = tmp_path / "full"
    assert main(quick(tiny, out, "--method", "full")) == 0
    for command in (["info", out], ["compose", out, out, "--method", "cat", "--head", "sum", "--out", tmp_path / "c"]):
        code, _, err = run(command, capsys)
        assert code == 2 and (f"{out} is a 'full' run, which keeps no adapter (only lora and dora runs do); its "
                              f"metrics and parameter counts are in {out / 'result.json'}, and `loralab analyze` "
                              "reads its update (a did or said run's once `loralab merge` has made it a model).") in err
    assert not (tmp_path / "c").exists()


def test_relative_data_path_is_stored_absolute(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(Path(tiny["data"]).parent)
    out = tmp_path / "rel"
    assert main(quick(tiny, out, "--data", Path(tiny["data"]).name)) == 0
    capsys.readouterr()
    assert json.loads((out / "config.json").read_text())["data"] == tiny["data"]
    monkeypatch.chdir(tmp_path)
    code, text, _ = run(["eval", "--run", out], capsys)
    assert code == 0 and json.loads(text)["test"]["n"] == 18


SIGINT_AT_STEP_5 = """
import os, signal, sys
from loralab.train import callbacks, loop

class SigintAtStep5(callbacks.Callback):  # a real SIGINT, sent when step 5's checkpoint is on disk: no race
    def on_checkpoint(self, trainer, path):
        if trainer.state.step == 5:
            os.kill(os.getpid(), signal.SIGINT)

# a shell's background job (``cmd &``, nohup) starts with SIGINT ignored, and Python then raises no
# KeyboardInterrupt: give this process the handler an interactive Ctrl-C would meet
signal.signal(signal.SIGINT, signal.default_int_handler)
standard = loop.standard_callbacks
loop.standard_callbacks = lambda cfg: [SigintAtStep5(), *standard(cfg)]
from loralab.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_prints_the_resume_command_and_resume_is_bit_identical(tiny, finished, tmp_path):
    """SIGINT at a checkpointed step: exit 130, the message names the checkpoint and the exact command."""
    args = quick(tiny, tmp_path / "int", "--checkpoint-every", "1")
    proc = subprocess.Popen([sys.executable, "-c", SIGINT_AT_STEP_5, *map(str, args)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = tmp_path / "int" / "checkpoint" / "checkpoint.json"
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    step = json.loads(state.read_text())["step"]
    assert f"loralab train: interrupted. The last checkpoint is {tmp_path / 'int' / 'checkpoint'} (step {step}); " \
           "continue with:" in err
    command = err.strip().splitlines()[-1].strip()
    assert command.startswith("loralab train ") and command.endswith("--resume") and "Traceback" not in err
    resumed = subprocess.run([sys.executable, "-m", "loralab", *shlex.split(command)[1:]], env=ENV,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    whole, again = adapter_tensors(finished), adapter_tensors(tmp_path / "int")
    assert whole.keys() == again.keys() and all((whole[k] == again[k]).all() for k in whole)


def test_compare_lists_runs_side_by_side_and_unfinished_ones(tiny, finished, tmp_path, capsys):
    assert main(quick(tiny, tmp_path / "r2", "--r", "2", "--seed", "1")) == 0
    shutil.copytree(finished, tmp_path / "stopped")
    (tmp_path / "stopped" / "result.json").unlink()  # as a run killed after its last checkpoint
    assert main(["merge", str(finished), "--out", str(tmp_path / "merged")]) == 0  # an HF config.json: not a run
    capsys.readouterr()
    code, out, err = run(["compare", finished, tmp_path / "r2", tmp_path / "stopped", tmp_path / "merged"], capsys)
    assert code == 0 and err == (f"loralab compare: skipped {tmp_path / 'merged'}: not a run directory (no `loralab "
                                 "train` config.json)\n")
    lines = out.splitlines()
    assert lines[0] == f"All runs: method lora, model {tiny['model']}, data {tiny['data']} (the other shared settings: --json)"
    assert lines[2] == ("| run | r | seed | trainable | best epoch | val loss | val accuracy | val macro_f1 | test loss | "
                        "test accuracy | test macro_f1 | s | MB |")
    result = json.loads((tmp_path / "r2" / "result.json").read_text())
    cells = lines[5].strip("| ").split(" | ")
    assert cells[:4] == [str(tmp_path / "r2"), "2", "1", f"{result['trainable_params']:,} "
                         f"({100 * result['trainable_params'] / result['total_params']:.2g}%)"]
    assert float(cells[9]) == pytest.approx(result["test"]["accuracy"], abs=1e-4)
    assert lines[6].startswith(f"| {tmp_path / 'stopped'} | 8 | 0 | stopped: step 18, epoch 1 of 1 (--resume) |")
    shutil.copytree(finished, tmp_path / "damaged")
    (tmp_path / "damaged" / "result.json").write_text('{"method": "lora", "test": {')  # cut short by a full disk
    code, out, _ = run(["compare", tmp_path / "damaged"], capsys)
    assert code == 0 and f"| {tmp_path / 'damaged'} | damaged: result.json is not readable JSON |" in out
    table = json.loads(run(["compare", finished, tmp_path / "r2", "--json"], capsys)[1])
    assert table["varying"] == ["r", "seed"] and table["common"]["method"] == "lora" and len(table["rows"]) == 2
    losses = {row["run"]: row["test"]["loss"] for row in table["rows"]}
    for key, expected in (("r", [tmp_path / "r2", tmp_path / "stopped", finished]),  # a setting: ascending, stable
                          ("test.loss", [*sorted(losses, key=losses.get), tmp_path / "stopped"])):  # no metrics: last
        order = [r["run"] for r in json.loads(run(["compare", tmp_path / "stopped", finished, tmp_path / "r2", "--sort",
                                                     key, "--json"], capsys)[1])["rows"]]
        assert order == [str(p) for p in expected], (key, order)
    code, _, err = run(["compare", finished, "--sort", "test.bleu"], capsys)
    assert code == 2 and "--sort test.bleu: no run has test 'bleu'; these have ['accuracy', 'loss', 'macro_f1']." in err
    code, _, err = run(["compare", tmp_path / "merged"], capsys)
    assert code == 2 and "is a run directory (the --out of `loralab train`, holding its config.json)" in err


def test_compare_shows_each_method_its_own_settings(tiny, finished, tmp_path, capsys):
    """A LoRA run beside a SAID run: r, alpha, dropout belong to the one, d and projection to the other ("–")."""
    assert main(quick(tiny, tmp_path / "said", "--method", "said", "--d", "300", "--lr", "5e-2")) == 0
    capsys.readouterr()
    table = json.loads(run(["compare", finished, tmp_path / "said", "--json"], capsys)[1])
    lora, said = (r["config"] for r in table["rows"])
    assert (lora["r"], said["d"], said["projection"]) == (8, 300, "fastfood")
    assert not {"d", "projection"} & set(lora) and not {"r", "alpha", "dropout", "init", "rslora"} & set(said)
    assert {"method", "r", "d", "projection"} <= set(table["varying"]) and "rank_pattern" not in table["varying"]
    lines = run(["compare", finished, tmp_path / "said"], capsys)[1].splitlines()
    assert lines[0] == f"All runs: model {tiny['model']}, data {tiny['data']} (the other shared settings: --json)"
    header = lines[2].strip("| ").split(" | ")
    cells = {row[0]: dict(zip(header, row)) for row in (line.strip("| ").split(" | ") for line in lines[4:])}
    assert (cells[str(finished)]["d"], cells[str(tmp_path / "said")]["r"]) == ("–", "–")
    assert (cells[str(finished)]["r"], cells[str(tmp_path / "said")]["d"]) == ("8", "300")


def test_resume_ignores_what_the_method_does_not_read():
    from loralab.train.config import LoraSettings, SubspaceSettings

    lora = TrainConfig(method="lora", subspace=SubspaceSettings(d=1000))
    assert lora.differences(replace(lora, subspace=SubspaceSettings(d=500))) == {}  # a LoRA run never reads --dim
    said = TrainConfig(method="said", subspace=SubspaceSettings(d=1000))
    assert said.differences(replace(said, subspace=SubspaceSettings(d=500))) == {"subspace.d": (1000, 500)}
    assert set(lora.differences(replace(lora, method="full", lora=LoraSettings(r=4)))) == {"method", "lora.r"}


def test_a_run_being_trained_is_locked_against_a_second_writer(tiny, tmp_path, capsys):
    """While one `loralab train` writes --out (held still by SIGSTOP once it holds the lock): a second train
    with --overwrite or --resume is refused without touching the run; eval and compare say it is training;
    the first run then finishes normally and leaves no lock file."""
    import signal
    import time

    from loralab.train.run_dir import LOCK_FILE, lock_holder

    out = tmp_path / "live"
    proc = subprocess.Popen([sys.executable, "-m", "loralab", *quick(tiny, out, "--epochs", "40")], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (lock_holder(out) and (out / "config.json").exists()) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGSTOP)
    try:
        holder = lock_holder(out)
        assert holder and holder.startswith(f"pid {proc.pid} on "), holder
        before = listing(out)
        for extra in (["--overwrite"], ["--resume"]):
            code, _, err = run(quick(tiny, out, "--epochs", "40", *extra), capsys)
            assert code == 2 and (f"--out {out} is being written by another `loralab train` ({holder}); wait for it "
                                  "to finish or stop it, or give another --out.") in err, err
        assert listing(out) == before
        code, _, err = run(["eval", out], capsys)
        assert code == 2 and f"{out} is still training ({holder}): its adapter/ is written when it finishes." in err
        code, text, _ = run(["compare", out], capsys)
        assert code == 0 and f"| {out} | training ({holder})" in text
    finally:
        proc.send_signal(signal.SIGCONT)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]
    assert (out / "result.json").is_file() and not (out / LOCK_FILE).exists() and lock_holder(out) is None

