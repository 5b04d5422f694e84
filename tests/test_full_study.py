"""The full study's machinery on a tiny model: cached units, resume, verdicts, the report, the Ray executor."""

from __future__ import annotations

import json

import pytest

from loralab.errors import TrainingError
from loralab.experiments import study_plan as plan
from loralab.experiments.full_study import run_full_study
from loralab.experiments.launcher import InlineExecutor, LocalExecutor, Unit, code_version, run_units, unit_dir
from loralab.train.config import TrainConfig


@pytest.fixture
def tiny_plan(tiny, monkeypatch):
    """One learning rate per family and one lr task, so a claim needs only a few 1-epoch runs of 32 examples."""
    monkeypatch.setattr(plan, "LR_GRID", {"full": (2e-3,), "lora": (2e-2,), "dora": (2e-2,), "lora-all": (2e-2,),
                                        "lora-r64": (2e-2,), "said": (0.1,)})
    monkeypatch.setattr(plan, "LR_TASKS", ("movie",))
    monkeypatch.setattr(plan, "COMPOSITION_REPLICATES", 2)  # second stages only where a test forces one
    monkeypatch.setattr(plan, "TRAJECTORY_SEEDS", 2)
    return plan.Sizes(model=tiny["model"], max_train=32, max_eval=24, max_length=32, batch_size=8, max_steps=6,
                      min_steps=4, eval_steps=2, patience=1, said_max_steps=4)


def test_claim_1_end_to_end_with_report(tiny_plan, tmp_path, capsys):
    study = run_full_study(out=str(tmp_path / "report"), runs=str(tmp_path / "runs"), tasks="movie", claims="1",
                           executor="inline", sizes=tiny_plan, seeds=(0, 1))
    c = study["claims"]["1"]
    assert c["verdict"] in ("holds", "does not hold", "inconclusive at this n")
    row = c["rows"][0]
    assert row["ratio"]["seeds"] == [0, 1] and row["ratio"]["n"] == 2
    assert c["params_fewer"] > 10
    assert row["ratio_all_linear"]["n"] == 2 and 1 < c["params_fewer_all_linear"] < c["params_fewer"]  # second arm
    assert study["meta"]["learning_rates"]["lora-all"]["chosen"] == 2e-2
    assert study["meta"]["learning_rates"]["full"]["chosen"] == 2e-3
    html = (tmp_path / "report" / "report.html").read_text()
    assert "data:image/png;base64," in html and "Claim 1:" in html and "<img" in html
    assert "| 1. LoRA r=8 reaches" in (tmp_path / "report" / "report.md").read_text()
    trained = study["meta"]["runs_trained_or_read"]
    assert study["meta"]["compute"]["runs"] == trained == len(list((tmp_path / "runs").glob("*/result.json")))
    assert study["meta"]["compute"]["trained"]["runs"] == trained  # a first invocation trains every run it uses
    assert f"{trained} runs, " in (tmp_path / "report" / "report.md").read_text()
    again = run_full_study(out=str(tmp_path / "report2"), runs=str(tmp_path / "runs"), tasks="movie", claims="1",
                           executor="inline", sizes=tiny_plan, seeds=(0, 1))
    assert "running" not in capsys.readouterr().out.split("claim 1:")[-1]  # nothing retrained: every unit cached
    assert again["claims"]["1"]["rows"][0]["ratio"] == row["ratio"] and again["meta"]["runs_trained_or_read"] == trained
    assert again["meta"]["compute"]["trained"] == {"runs": 0, "run_hours": 0.0, "resumed": 0}
    assert f"{trained} runs, " in (tmp_path / "report2" / "report.md").read_text()
    assert "— 0 of them trained by this invocation (0.0 h), the rest read back" in (
        tmp_path / "report2" / "report.md").read_text()
    import shutil

    shutil.rmtree(tmp_path / "runs")  # the run root is lost; claim 1 reads results only, recorded in runs.jsonl
    third = run_full_study(out=str(tmp_path / "report2"), runs=str(tmp_path / "runs"), tasks="movie", claims="1",
                           executor="inline", sizes=tiny_plan, seeds=(0, 1))
    printed = capsys.readouterr().out.split("claim 1:")[-1]
    assert "running" not in printed, printed
    assert third["claims"]["1"]["rows"][0]["ratio"] == row["ratio"]


def test_claim_7_pairs_independent_seeds_and_measures_how_far_a_moved(tiny_plan, tmp_path):
    """Claim 7 on one task, two seeds: pairs (r8 s, r64 s + 1), r = 64 at its own family's lr, and A's movement
    from the start the trainer built — about 1e-10 for a run at lr 1e-10 (Adam's steps are ≈ lr, so its saved A is
    its A_0 to that precision), far above it for a trained one."""
    from dataclasses import replace

    from loralab.analysis.updates import load_updates
    from loralab.experiments.claims_geometry import input_movement
    from loralab.train.loop import train

    study = run_full_study(out=str(tmp_path / "report"), runs=str(tmp_path / "runs"), tasks="movie", claims="7",
                           executor="inline", sizes=tiny_plan, seeds=(0, 1))
    c = study["claims"]["7"]
    assert [(p["r8_seed"], p["r64_seed"]) for p in c["rows"][0]["pairs"]] == [(0, 1), (1, 2)]
    assert study["meta"]["learning_rates"]["lora-r64"]["chosen"] == 2e-2 and c["learning_rates"]["r64"] == 2e-2
    assert c["accuracy_difference"]["n"] == 2 and c["r64_trains"] in ("trains", "trails", "undecided")
    assert c["a_moved"]["r8"] > 0 and c["a_moved"]["r64"] > 0
    frozen = replace(plan.lora_unit("movie", tiny_plan, 0, 1e-10).config, out=str(tmp_path / "lr0"), max_steps=2,
                     min_steps=2)
    train(frozen, progress=False)
    assert input_movement(frozen, load_updates(tmp_path / "lr0", with_base=False)) < 1e-8


def test_a_claims_missing_runs_train_together(tiny_plan, tmp_path, capsys):
    """Claim 10 alone: after the lr sweep (movie, seed 0) the other five adapters of its two replicates (seeds
    rotated over movie, tweets, sms) are one batch, not one run at a time; every cell has an interval over them."""
    study = run_full_study(out=str(tmp_path / "report"), runs=str(tmp_path / "runs"), claims="10", workers=2,
                           sizes=tiny_plan, seeds=(0, 1))
    batches = [line.split(":")[0] for line in capsys.readouterr().out.splitlines() if "already done" in line]
    assert batches == ["1 runs", "5 runs"], batches
    c = study["claims"]["10"]
    assert c["verdict"] != "not run" and c["replicates"] == 2
    assert [r["runs"] for r in c["interference"]][1] != [r["runs"] for r in c["interference"]][0]
    for cell in c["cells"].values():
        assert cell["all_w1"]["n"] == 2 and cell["all_w1"]["low"] <= cell["all_w1"]["mean"] <= cell["all_w1"]["high"]


def test_claim_10_second_stage_trains_together_and_its_tables_are_read_back(tiny_plan, tmp_path, capsys, monkeypatch):
    """Claim 10 sent to a second stage of 3 replicates (forced: tiny runs decide nothing): stage 1's replicates
    (seeds 0, 1, 2 and 1, 2, 0) train as one batch after the lr sweep, stage 2's (seeds 3, 4, 5) as another; every
    cell is over 3 replicates. Run again, every interference table is read back, not evaluated."""
    from loralab.experiments import claims_geometry, interference

    monkeypatch.setattr(plan, "COMPOSITION_REPLICATES", 3)
    monkeypatch.setattr(claims_geometry, "composition_second_stage", lambda found, first, most: most)
    study = run_full_study(out=str(tmp_path / "report"), runs=str(tmp_path / "runs"), claims="10", executor="inline",
                           sizes=tiny_plan, seeds=(0, 1))
    batches = [line.split(":")[0] for line in capsys.readouterr().out.splitlines() if "already done" in line]
    assert batches == ["1 runs", "5 runs", "3 runs"], batches
    c = study["claims"]["10"]
    assert c["replicates"] == 3 and c["second_stage"] and c["second_stage_error"]["total"] == 3
    assert c["stage_1"]["replicates"] == 2
    assert [r.rsplit("-s", 1)[1].split("-")[0] for r in c["interference"][2]["runs"]] == ["3", "4", "5"]
    assert "geometry" in c["interference"][0] and set(c["interference"][2]) == {"runs", "table", "negation", "seconds"}
    assert all(cell["all_w1"]["n"] == 3 for cell in c["cells"].values()) and "(second stage)" in c["summary"]

    def evaluated(*args, **kwargs):
        raise AssertionError("an interference table of the same runs and code was evaluated again")

    monkeypatch.setattr(interference, "run_interference", evaluated)
    again = run_full_study(out=str(tmp_path / "report"), runs=str(tmp_path / "runs"), claims="10", executor="inline",
                           sizes=tiny_plan, seeds=(0, 1))
    assert again["claims"]["10"]["cells"] == c["cells"]
    hours = sum(r["seconds"] for r in c["interference"]) / 3600  # the evaluation's cost, kept when read back
    assert again["claims"]["10"]["evaluation_hours"] == c["evaluation_hours"] == hours > 0
    assert again["claims"]["10"]["summary"].endswith(f" Evaluation: 3 interference tables, {hours:.2f} h.")


def test_claim_11_second_stage_trains_its_seeds_together_and_joins_them(tiny_plan, tmp_path, capsys, monkeypatch):
    """Claim 11 with every arm sent to a second stage (forced: tiny runs decide nothing): stage 1's six runs (three
    arms × seeds 0, 1) are one batch after the lr sweeps, stage 2's seeds 2 and 3 of all three arms another — full
    FT's descriptive arm included (session 24) —; each interval is over all four seeds and the summary says so."""
    from dataclasses import replace

    from loralab.experiments import claims_training

    recipe = plan.base_config
    monkeypatch.setattr(plan, "base_config", lambda *args: replace(recipe(*args), analysis_every=2))  # 6-step runs
    monkeypatch.setattr(plan, "TRAJECTORY_SEEDS", 4)
    monkeypatch.setattr(claims_training, "second_stage_seeds", lambda ctx, interval, threshold, most: (2, 3))
    study = run_full_study(out=str(tmp_path / "report"), runs=str(tmp_path / "runs"), tasks="movie", claims="11",
                           executor="inline", sizes=tiny_plan, seeds=(0, 1))
    c = study["claims"]["11"]
    batches = [line.split(":")[0] for line in capsys.readouterr().out.splitlines() if "already done" in line]
    assert batches[-1] == "6 runs", (batches, c["summary"])
    assert c["second_stage"] == {"full": [2, 3], "lora": [2, 3], "dora": [2, 3]}
    for arm in ("full", "lora", "dora"):
        assert sorted(c["rows"][arm]["per_seed"], key=int) == [0, 1, 2, 3] and c["rows"][arm]["across_seeds"]["n"] == 4
    assert c["summary"].count("(4 seeds: second stage)") == 3 and "full FT is descriptive" in c["summary"]
    assert c["second_stage_error"]["total"] == 4


def test_bad_claim_and_task_lists_are_refused(tmp_path):
    from loralab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"--claims takes a comma-separated subset of \[1, 2, .*11\]; got '12'"):
        run_full_study(out=str(tmp_path), claims="12")
    with pytest.raises(ConfigError, match=r"--tasks takes a comma-separated subset of \['movie', 'tweets', 'trec', "
                                          r"'sms'\]; got 'imdb'"):
        run_full_study(out=str(tmp_path), tasks="imdb")


def tiny_units(tiny) -> list[Unit]:
    common = dict(model=tiny["model"], data=tiny["data"], max_train=24, max_eval=16, max_length=32, epochs=1,
                  batch_size=8, lr=1e-2)
    return [Unit(f"tiny-s{s}", TrainConfig(**common, seed=s)) for s in (0, 1)]


def test_ray_executor_runs_two_units_on_a_local_cluster(tiny, tmp_path):
    ray = pytest.importorskip("ray")
    from loralab.experiments.launcher import RayExecutor

    try:
        results = run_units(tiny_units(tiny), tmp_path, RayExecutor(workers=2), desc="ray")
    finally:
        ray.shutdown()
    assert sorted(results) == ["tiny-s0", "tiny-s1"]
    local = run_units(tiny_units(tiny), tmp_path / "local", LocalExecutor(workers=2))
    for name in results:  # the same config trains to the same result wherever it runs
        assert results[name].test == local[name].test


def test_inline_executor_trains_in_this_process_like_a_worker_process(tiny, tmp_path):
    """The same unit, one thread: inline and in a worker process give the same result and the same adapter weights
    (bit for bit); torch's thread count is put back; the trainer's output goes to the unit's log."""
    import torch
    from safetensors.torch import load_file

    threads = torch.get_num_threads()
    units = tiny_units(tiny)[:1]
    inline = run_units(units, tmp_path / "inline", InlineExecutor(threads=1))
    assert torch.get_num_threads() == threads
    local = run_units(units, tmp_path / "local", LocalExecutor(workers=1, threads=1))
    for unit in units:
        assert inline[unit.name].test == local[unit.name].test
        a, b = (load_file(unit_dir(tmp_path / root, unit, code_version()) / "adapter" / "adapter_model.safetensors")
                for root in ("inline", "local"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = next((tmp_path / "inline" / "logs").glob("tiny-s0-*.log")).read_text()
    assert "validation loss" in log  # the trainer's output went to the unit's log, not to this process's


def test_inline_executor_reports_a_failed_unit_after_the_others_and_lets_ctrl_c_through(tiny, tmp_path):
    from dataclasses import replace

    from loralab.experiments.launcher import make_executor

    good, bad = tiny_units(tiny)
    bad = Unit(bad.name, replace(bad.config, data=str(tmp_path / "missing.csv")))
    with pytest.raises(TrainingError, match=r"dataset '.*missing.csv' is neither a known name \('movie',"):
        run_units([bad, good], tmp_path, make_executor("inline"))
    assert (unit_dir(tmp_path, good, code_version()) / "result.json").exists()  # the unit after it still trained

    def interrupted(job):
        raise KeyboardInterrupt

    futures, as_completed = InlineExecutor().submit_calls(interrupted, [(1,), (2,)])
    with pytest.raises(KeyboardInterrupt):
        list(as_completed(futures))
    assert not futures[1].done()  # Ctrl-C stops the batch: the second call never started


def test_finished_units_are_read_back_not_rerun(tiny, tmp_path):
    units, inline = tiny_units(tiny), InlineExecutor()
    first = run_units(units[:1], tmp_path, inline)
    done = unit_dir(tmp_path, units[0], code_version())
    stamp = (done / "result.json").stat().st_mtime_ns
    both = run_units(units, tmp_path, inline)
    assert (done / "result.json").stat().st_mtime_ns == stamp and both["tiny-s0"] == first["tiny-s0"]
    assert sorted(p.name.split("-")[1] for p in (tmp_path / "logs").iterdir()) == ["s0", "s1"]  # one log per unit


def test_a_units_key_names_its_data_by_content_and_skips_what_its_method_ignores(tiny, tmp_path):
    import os
    import shutil
    from dataclasses import replace

    from loralab.experiments.launcher import unit_key
    from loralab.train.config import SubspaceSettings

    cfg = tiny_units(tiny)[0].config
    copy = tmp_path / "elsewhere.jsonl"
    shutil.copy(cfg.data, copy)
    key = unit_key(cfg, "v")
    assert unit_key(replace(cfg, data=str(copy)), "v") == key  # same bytes, another path: the same run
    assert unit_key(replace(cfg, subspace=SubspaceSettings(d=7)), "v") == key  # a LoRA run reads no subspace
    assert unit_key(replace(cfg, out="x", overwrite=True), "v") == key  # nor do resume-only fields count
    assert unit_key(replace(cfg, model=os.path.relpath(cfg.model)), "v") == key  # a local model: by its absolute path
    copy.write_text(copy.read_text() + copy.read_text().splitlines()[0] + "\n")
    assert unit_key(replace(cfg, data=str(copy)), "v") != key  # other bytes: another run
    assert unit_key(replace(cfg, lr=2e-2), "v") != key and unit_key(cfg, "w") != key


def test_an_archived_unit_is_read_back_when_its_run_directory_is_gone(tiny, tmp_path):
    import shutil

    from loralab.errors import ConfigError
    from loralab.experiments.launcher import Archive, machine_kind

    units, archive = tiny_units(tiny), tmp_path / "runs.jsonl"
    first = run_units(units[:1], tmp_path / "a", InlineExecutor(), archive=archive)
    shutil.rmtree(tmp_path / "a")  # the run root is lost; the archive (committed beside a report) is not
    both = run_units(units, tmp_path / "b", InlineExecutor(), archive=archive)
    assert both["tiny-s0"] == first["tiny-s0"]
    assert not unit_dir(tmp_path / "b", units[0], code_version()).exists()  # read back, not trained again
    lines = [json.loads(line) for line in archive.read_text().splitlines()]
    assert [r["run"].rsplit("-", 1)[0] for r in lines] == ["tiny-s0", "tiny-s1"]  # each run once, as it ended
    assert lines[1]["result"]["test"] == both["tiny-s1"].test and lines[1]["machine"] == machine_kind()
    archive.write_text(archive.read_text() + "{oops\n")
    with pytest.raises(ConfigError, match=r"runs.jsonl, line 3: not a run record \('\{oops'\); remove the line"):
        Archive(archive)


@pytest.mark.slow
@pytest.mark.timeout(3600)  # ~100 tiny runs, claim 9's rank benchmark among them
def test_every_claim_but_smollm2_runs_on_a_tiny_model(tiny_plan, tmp_path, monkeypatch):
    """Claims 1–7 and 9–11 on the tiny BERT, four tasks, two seeds: every claim ends in a verdict and states its
    power (or the n that would decide it)."""
    monkeypatch.setattr(plan, "D90_DIMS", (250, 1000))
    study = run_full_study(out=str(tmp_path / "report"), runs=str(tmp_path / "runs"),
                           claims="1,2,3,4,5,6,7,9,10,11", executor="inline", sizes=tiny_plan, seeds=(0, 1))
    verdicts = {k: c["verdict"] for k, c in study["claims"].items()}
    assert "not run" not in verdicts.values(), {k: c.get("error") for k, c in study["claims"].items()}
    assert all("power" in c for c in study["claims"].values())  # what each test could decide, stated
    figures = {p.name for p in (tmp_path / "report" / "figures").iterdir()}
    assert figures == {f"claim{n}.png" for n in (1, 2, 3, 4, 5, 6, 7, 9, 10, 11)}
    for row in study["claims"]["6"]["rows"]:  # the shuffled-label null ran as long as the real run's best weights
        null = json.loads(next((tmp_path / "runs").glob(f"{row['task']}-shuffled-full-*/result.json")).read_text())
        assert null["steps"] == row["steps"] and null["config"]["patience"] == 0
    stopped = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*-lora-qv-r8-*/result.json")]
    assert stopped and all(r["config"]["metric_for_best"] == "loss" and r["best_step"] <= r["steps"] <= 6
                           for r in stopped)  # early stopping on validation loss, capped at max_steps


def test_ray_executor_joins_a_running_cluster_through_ray_address(tiny, tmp_path, monkeypatch):
    """A head started as users start one (`ray start --head`), joined through RAY_ADDRESS: Ray refuses num_cpus
    when joining an existing cluster, which the executor used to pass."""
    ray = pytest.importorskip("ray")
    import socket
    import subprocess
    import sys
    from pathlib import Path

    from loralab.experiments.launcher import make_executor

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cli = str(Path(sys.executable).with_name("ray"))
    start = subprocess.run([cli, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                            "--num-cpus", "2", "--include-dashboard",
                            "false", "--disable-usage-stats"], capture_output=True, text=True, timeout=180)
    assert start.returncode == 0, start.stderr[-2000:]
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    try:
        executor = make_executor("ray", workers=2)
        assert executor.kind == "ray" and make_executor("local", workers=2).kind == "local"  # as reports name them
        assert ray.get_runtime_context().gcs_address.endswith(f":{port}")  # joined the head, not a Ray of its own
        results = run_units(tiny_units(tiny), tmp_path, executor, desc="ray")
    finally:
        ray.shutdown()
        subprocess.run([cli, "stop", "--force"], capture_output=True, timeout=120)
    assert sorted(results) == ["tiny-s0", "tiny-s1"]
    version = code_version()
    assert all((unit_dir(tmp_path, u, version) / "result.json").exists() for u in tiny_units(tiny))


def test_the_report_header_states_the_rank_benchmarks_compute_beside_the_studys():
    from loralab.experiments.study_report import compute_text

    study = {"meta": {"compute": {"runs": 190, "run_hours": 6.0, "workers": 2}, "wall_time_s": 3600.0},
             "claims": {"9": {"compute": {"runs": 401, "run_hours": 21.5, "workers": 2}}}}
    assert compute_text(study) == ("190 runs, 6.0 h of run time (2 at a time ≈ 3.0 h elapsed), plus the rank "
                                   "benchmark's 401 runs, 21.5 h of run time (≈ 10.8 h elapsed); this invocation 1.00 h")
    del study["claims"]["9"]
    assert compute_text(study) == "190 runs, 6.0 h of run time (2 at a time ≈ 3.0 h elapsed); this invocation 1.00 h"
    study["meta"]["compute"]["trained"] = {"runs": 30, "run_hours": 1.41}
    assert compute_text(study) == ("190 runs, 6.0 h of run time (2 at a time ≈ 3.0 h elapsed) — 30 of them trained by "
                                   "this invocation (1.4 h), the rest read back; this invocation 1.00 h")


def test_carried_compute_adds_what_each_invocation_trained():
    """Study.json of session 21: claims 1–10 carried (230 runs, 7.4 h) and claim 11 trained 27 runs (1.13 h) of the
    45 it used; a later `--claims 9` carries 257 runs, 8.53 h. A file without `trained` keeps what it carried; one
    that carried nothing counts all its runs."""
    from loralab.experiments.full_study import compute_behind

    carried = {"runs": 230, "run_hours": 7.4, "resumed": 2, "workers": 2}
    own = {"runs": 45, "run_hours": 1.78, "resumed": 0, "workers": 2,
           "trained": {"runs": 27, "run_hours": 1.13, "resumed": 0}}
    assert compute_behind({"carried_over": {"compute": carried}, "compute": own}) == {
        "runs": 257, "run_hours": pytest.approx(8.53), "resumed": 2, "workers": 2}
    del own["trained"]
    assert compute_behind({"carried_over": {"compute": carried}, "compute": own}) == carried
    assert compute_behind({"compute": own}) == own


def test_a_claims_subset_updates_its_claims_and_keeps_the_others(tiny_plan, tmp_path, monkeypatch):
    """`--claims 2` after a study of claims 1 and 2 replaces claim 2 and keeps claim 1 (said so in meta and in the
    compute line); a study of other seeds replaces the file; a damaged study.json stops before any claim runs."""
    from loralab.errors import ConfigError
    from loralab.experiments import study_report
    from loralab.experiments.context import Context

    calls = []

    def outcome(self, number):
        calls.append(number)
        self.lr_table[f"family{number}"] = {"grid": {"0.001": 0.8}, "chosen": 0.001}  # as a claim's tuning fills it
        return {"claim": number, "title": f"claim {number}", "verdict": "holds", "summary": f"call {len(calls)}"}

    monkeypatch.setattr(Context, "outcome", outcome)
    monkeypatch.setattr(study_report, "write_report", lambda study, out: None)
    out = str(tmp_path / "report")

    def study(claims, seeds=(0, 1)):
        return run_full_study(out=out, runs=str(tmp_path / "runs"), tasks="movie", claims=claims, sizes=tiny_plan,
                              seeds=seeds, executor="inline")

    study("1,2")
    later = study("2")
    assert {n: c["summary"] for n, c in later["claims"].items()} == {"1": "call 1", "2": "call 3"}
    assert later["meta"]["claims"] == [1, 2] and later["meta"]["carried_over"]["claims"] == [1]
    assert set(later["meta"]["learning_rates"]) == {"family1", "family2"}  # claim 1's grid came with it
    assert json.loads((tmp_path / "report" / "study.json").read_text())["claims"]["1"]["summary"] == "call 1"
    assert study_report.compute_text(later).startswith(  # this invocation trained nothing: no "0 runs" said
        "claims 1 carried over from an earlier invocation of the same study (0 runs, 0.0 h of run time); this")
    other = study("2", seeds=(0,))
    assert list(other["claims"]) == ["2"] and "carried_over" not in other["meta"]
    (tmp_path / "report" / "study.json").write_text("{not json")
    with pytest.raises(ConfigError) as raised:
        study("1")
    assert str(raised.value) == (f"{tmp_path / 'report' / 'study.json'} is not a study.json this version reads; move "
                                 "it away (or choose another --out) and run again.")
    assert calls == [1, 2, 2, 2]


def test_rekey_archive_renames_only_the_old_keys_runs_and_keeps_every_byte_else(tmp_path):
    from loralab.experiments.launcher import rekey_archive

    lines = [{"run": "dense-k4-r1-s0-lr0.003-aaa", "machine": "m", "result": {"test_loss": 0.1 + 0.2}},
             {"key": "aaa", "machine": "m", "result": {"x": 1}, "run": "movie-lora-aaa"},
             {"run": "dense-k4-r4-s0-lr0.003-bbb", "result": {}}]
    archive = tmp_path / "runs.jsonl"
    archive.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert rekey_archive(archive, "aaa", "ccc") == 2
    assert archive.read_text() == "".join(json.dumps(line) + "\n" for line in lines).replace("aaa", "ccc")
