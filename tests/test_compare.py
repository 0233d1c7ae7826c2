"""`cnnpipe compare` against a real SQLite MLflow store holding three runs."""

import csv
import io

import pytest

from cnnpipe.config import MlflowConfig, parse_params
from cnnpipe.tracking.mlflow_run import start_run
from tests.conftest import run_cnnpipe


@pytest.fixture
def store(tmp_path, raw_params):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    for name, lr, accuracy, loss in (
        ("slow", 0.001, 0.88, 0.35),
        ("fast", 0.01, 0.91, 0.27),
        ("mid", 0.003, 0.90, 0.3),
    ):
        raw_params["train"]["lr"] = lr
        run = start_run(MlflowConfig(tracking_uri=uri, experiment="sweep", run_name=name))
        run.log_params(parse_params(raw_params))
        run.log_metrics({"test/accuracy": accuracy, "test/loss": loss, "images_per_sec": 1000.0})
        run.finish()
    start_run(MlflowConfig(tracking_uri=uri, experiment="sweep", run_name="unfinished")).log_params(
        parse_params(raw_params)
    )
    return tmp_path, uri


def test_compare_sorts_by_metric_and_shows_only_differing_params(store):
    root, uri = store
    result = run_cnnpipe("compare", "--tracking-uri", uri, "--experiment", "sweep", "--format", "csv", cwd=root)
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == ["run", "status", "train.lr", "test/accuracy", "test/loss", "images_per_sec"]
    assert [row[0] for row in rows[1:]] == ["fast", "mid", "slow", "unfinished"]  # no metric: last
    assert rows[1] == ["fast", "finished", "0.01", "0.91", "0.27", "1000"]
    assert rows[4][1] == "running" and rows[4][3] == ""


def test_compare_loss_sorts_ascending_and_writes_markdown(store):
    root, uri = store
    args = ("--tracking-uri", uri, "--experiment", "sweep", "--metric", "loss", "--format", "md", "--output", "r.md")
    run_cnnpipe("compare", *args, cwd=root)
    lines = (root / "r.md").read_text().splitlines()
    assert lines[0] == "| run | status | train.lr | test/loss | test/accuracy | images_per_sec |"
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| fast", "| mid", "| slow", "| unfinished"]


def test_compare_prints_a_table_named_after_the_experiment(store):
    root, uri = store
    result = run_cnnpipe("compare", "--tracking-uri", uri, "--experiment", "sweep", cwd=root)
    assert "sweep: best test/accuracy first" in result.stdout and "fast" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--experiment", "nope"), "cnnpipe: error: --experiment: no experiment 'nope' at sqlite:///"),
        (("--experiment", "sweep", "--metric", "f1"), "cnnpipe: error: --metric: no run logged 'f1'; logged metrics:"),
    ],
)
def test_compare_bad_input_is_one_line_and_exit_2(store, args, message):
    root, uri = store
    result = run_cnnpipe("compare", "--tracking-uri", uri, *args, cwd=root, check=False)
    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(message)
