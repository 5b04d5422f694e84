"""`loralab interference` and `loralab compose` end to end, on two tiny runs of real data (movie, tweets)."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from loralab import data as datasets
from loralab.cli import main
from loralab.experiments.stats import mean_ci, paired, spearman, verdict
from test_training import train_args

pytestmark = pytest.mark.usefixtures("keep_threads")


@pytest.fixture(scope="module")
def task_runs(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    tweets = root / "tweets.csv"
    with open(tweets, "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["text", "label"])
        writer.writeheader()
        writer.writerows({"text": r["text"], "label": ["negative", "positive"][r["label"]]}
                         for r in datasets.load("tweets", "train", seed=0, limit=180).examples)
    for name, data in (("movie", tiny["data"]), ("tweets", str(tweets))):
        assert main(train_args(tiny, root / name, "--epochs", "1", "--data", data, "--lr", "2e-2")) == 0
    return root


def test_interference_table_negation_and_geometry(task_runs, tmp_path, capsys):
    assert main(["interference", "--runs", str(task_runs / "movie"), str(task_runs / "tweets"),
                 "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "interference.json").read_text())
    assert set(result["table"]) == {"movie", "tweets"}
    movie = result["table"]["movie"]
    own = json.loads((task_runs / "movie" / "result.json").read_text())["test"]["accuracy"]
    assert movie["own"] == pytest.approx(own, abs=1e-9)  # the composed own adapter is the run's adapter
    assert set(movie["others_alone"]) == {"tweets"} and set(movie["pairs_w1"]) == {"tweets"}
    assert len(result["negation"]) == 2 and result["predictors"]["n_ordered_pairs"] == 2
    summary = result["geometry"]["movie vs tweets"]["summary"]
    assert -1 <= summary["pair_cosine"] <= 1 and 0 <= summary["pair_sign_conflict"] <= 1
    assert (tmp_path / "interference.png").stat().st_size > 10_000
    text = (tmp_path / "interference.md").read_text()
    assert "| movie |" in text
    # both runs used --seed 0: the same initial A, which the report says instead of reading shared directions into it
    assert result["geometry"]["movie vs tweets"]["shared_start"] and summary["pair_a_cosine"] > 0.3
    assert "**Shared start** (movie vs tweets): in most layers the two A matrices are correlated" in text


def test_two_runs_of_one_dataset_and_a_run_without_an_adapter(task_runs, tiny, tmp_path, capsys):
    """Two runs of movie (e.g. two seeds) were one table row and a TypeError; a full run, a missing adapter/."""
    shutil.copytree(task_runs / "movie", tmp_path / "again")
    assert main(["interference", str(task_runs / "movie"), str(tmp_path / "again"), "--out", str(tmp_path / "i")]) == 0
    result = json.loads((tmp_path / "i" / "interference.json").read_text())
    first, second = "movie (movie)", "movie (again)"
    assert set(result["table"]) == {first, second} and list(result["geometry"]) == [f"{first} vs {second}"]
    assert result["geometry"][f"{first} vs {second}"]["summary"]["pair_cosine"] == pytest.approx(1.0)  # the same ΔW
    assert main(train_args(tiny, tmp_path / "full", "--epochs", "1", "--method", "full")) == 0
    capsys.readouterr()
    assert main(["interference", str(task_runs / "movie"), str(tmp_path / "full"), "--out", str(tmp_path / "j")]) == 2
    assert f"{tmp_path / 'full'} is a 'full' run, which keeps no adapter" in capsys.readouterr().err


def test_compose_command_writes_a_loadable_adapter(task_runs, tiny, tmp_path, capsys):
    movie, tweets = str(task_runs / "movie"), str(task_runs / "tweets")
    flags = ["--weights", "1", "-1", "--method", "svd", "--rank", "4", "--head", "keep:0"]
    assert main(["compose", movie, tweets, *flags, "--out", str(tmp_path / "c")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["ranks"] == [4] and 0 < printed["max_relative_error"] < 1
    labels = json.loads((task_runs / "movie" / "result.json").read_text())["labels"]
    assert json.loads((tmp_path / "c" / "compose.json").read_text())["labels"] == labels == ["negative", "positive"]
    assert main(["compose", "--adapters", movie, tweets, *flags, "--out", str(tmp_path / "c2")]) == 0
    weights = "adapter_model.safetensors"
    assert (tmp_path / "c" / weights).read_bytes() == (tmp_path / "c2" / weights).read_bytes()  # same either way
    assert main(["compose", movie, "--adapters", tweets, "--out", str(tmp_path / "twice")]) == 2
    assert f"adapters given twice: {movie} and --adapters {tweets}; give them once." in capsys.readouterr().err
    assert main(["interference", "--out", str(tmp_path / "none")]) == 2
    assert "give the runs: `loralab interference DIR DIR … --out OUT` (or --runs DIR DIR …)." in capsys.readouterr().err
    assert not (tmp_path / "twice").exists() and not (tmp_path / "none").exists()
    code = main(["eval", "--model", tiny["model"], "--adapter", str(tmp_path / "c"), "--data", tiny["data"]])
    assert code == 0
    assert main(["compose", "--adapters", str(task_runs / "movie"), "--method", "ties", "--out", str(tmp_path / "t")]) == 2
    assert "--method ties re-factors a dense ΔW: give --rank R or --energy E" in capsys.readouterr().err


def test_spearman_known_values():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [1, 1, 1]) is None and spearman([1, 2], [2, 1]) is None
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(0.9486832980505138)


def test_intervals_and_verdicts():
    ci = mean_ci([0.80, 0.82, 0.84])  # mean 0.82, sd 0.02, t_{0.975}(2) = 4.302653 (exact; tables round to 4.303)
    assert ci["mean"] == pytest.approx(0.82) and ci["high"] - ci["mean"] == pytest.approx(4.302653 * 0.02 / 3**0.5)
    ratio = paired({0: 0.80, 1: 0.90, 2: 0.70}, {0: 0.80, 1: 0.90, 2: 0.70}, op="ratio")
    assert ratio["mean"] == 1.0 and ratio["low"] == ratio["high"] == 1.0
    assert verdict({"low": 0.985, "high": 0.99}, 0.98) == "holds"
    assert verdict({"low": 0.97, "high": 0.99}, 0.98) == "inconclusive at this n"
    assert verdict({"low": 0.90, "high": 0.97}, 0.98) == "does not hold"
