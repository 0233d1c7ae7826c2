"""`cnnpipe compare` against a real SQLite MLflow store: training runs with their evaluations as child runs.

The runs are made with MlflowClient itself, as the train and evaluate stages lay them out, so that these tests
pin the layout compare reads rather than the stages' own logging code.
"""

import csv
import io
import os
import subprocess
import sys

import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from rich.console import Console

from cnnpipe.tracking.compare import PARENT_TAG, STAGE_TAG, compare
from tests.helpers import run_cnnpipe

# name, lr, optimizer, width, test accuracy (None: never evaluated)
SWEEP = (
    ("lr-0.001-sgd-width-1", 0.001, "sgd", 1.0, 0.88),
    ("lr-0.01-adamw-width-2", 0.01, "adamw", 2.0, 0.91),
    ("bold-fox-123", 0.003, "adamw", 1.0, 0.90),
    ("lr-0.003-adamw-width-0.5", 0.003, "adamw", 0.5, 0.87),
    ("calm-heron-7", 0.03, "sgd", 2.0, 0.85),
    ("lr-0.0003-sgd-width-1.5", 0.0003, "sgd", 1.5, None),
)
NAMES_BEST_FIRST = [
    "lr-0.01-adamw-width-2",
    "bold-fox-123",
    "lr-0.001-sgd-width-1",
    "lr-0.003-adamw-width-0.5",
    "calm-heron-7",
    "lr-0.0003-sgd-width-1.5",  # no evaluation: last
]


def _run(client, name, stage, params, metrics, start, parent=None, status="FINISHED"):
    """A run as the stages log it; `start` orders the evaluations of one training."""
    tags = {STAGE_TAG: stage, **({PARENT_TAG: parent} if parent else {})}
    run = client.create_run(client.get_experiment_by_name("sweep").experiment_id, start, tags, name)
    client.log_batch(
        run.info.run_id,
        [Metric(key, value, start, 0) for key, value in metrics.items()],
        [Param(key, str(value)) for key, value in params.items()],
    )
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Six trainings, five evaluated three times: an older evaluation, the newest finished one, a newer failed one.
    evaluate.batch_size differs only in the evaluation runs; seed and epochs are the same everywhere."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    client.create_experiment("sweep")
    for number, (name, lr, optimizer, width, accuracy) in enumerate(SWEEP):
        params = {"seed": 42, "train.epochs": 15, "train.lr": lr, "train.optimizer": optimizer, "model.width": width}
        best = (accuracy or 0.8) + 0.01
        summary = {"best/val/acc": best, "best/val/loss": 0.3, "mean/images_per_sec": 6210.4, "rf_final": 28}
        parent = _run(client, name, "train", params, {"train/loss": 0.4, **summary}, 1000 * number)
        if accuracy is not None:
            for offset, batch_size, test, status in (
                (1, 512, accuracy - 0.2, "FINISHED"),
                (2, 256 if name == "bold-fox-123" else 512, accuracy, "FINISHED"),
                (3, 512, accuracy - 0.3, "FAILED"),
            ):
                params = {"evaluate.batch_size": batch_size, "evaluate.misclassified": 36}
                metrics = {"test/acc": test, "test/loss": 1 - test, "test/count": 3000, "test/acc/Bag": 0.99}
                _run(client, f"{name}-eval", "evaluate", params, metrics, 1000 * number + offset, parent, status)
    return root, uri


def _csv(root, uri, *args):
    result = run_cnnpipe("compare", "--tracking-uri", uri, "--experiment", "sweep", "--format", "csv", *args, cwd=root)
    return list(csv.reader(io.StringIO(result.stdout)))


def test_evaluations_merge_into_their_training_row(store):
    rows = _csv(*store)
    params = ["evaluate.batch_size", "model.width", "train.lr", "train.optimizer"]
    metrics = ["test/acc", "test/loss", "best/val/acc", "best/val/loss", "mean/images_per_sec", "rf_final"]
    assert rows[0] == ["run", "status", *params, *metrics]
    assert [row[0] for row in rows[1:]] == NAMES_BEST_FIRST  # one row per training, none for an evaluation
    # bold-fox-123: its newest finished evaluation, neither the older one nor the newer failed one
    assert rows[2] == [
        "bold-fox-123",
        "finished",
        "256",
        "1.0",
        "0.003",
        "adamw",
        "0.9",
        "0.1",
        "0.91",
        "0.3",
        "6210",
        "28",
    ]
    assert rows[-1][6:9] == ["", "", "0.81"]  # never evaluated: empty test cells, sorted last


def test_loss_sorts_ascending_and_writes_markdown(store):
    root, uri = store
    args = ("--tracking-uri", uri, "--experiment", "sweep", "--metric", "loss", "--format", "md", "--output", "r.md")
    run_cnnpipe("compare", *args, cwd=root)
    lines = (root / "r.md").read_text().splitlines()
    assert lines[0].endswith("| test/loss | test/acc | best/val/acc | best/val/loss | mean/images_per_sec | rf_final |")
    assert [line.split(" | ")[0] for line in lines[2:]] == [f"| {name}" for name in NAMES_BEST_FIRST]


def test_runs_from_before_the_stage_tag_are_rows_too(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("sweep")
    for name, accuracy in (("old", 0.9), ("older", 0.92)):
        run_id = client.create_run(experiment, run_name=name).info.run_id
        client.log_metric(run_id, "test/accuracy", accuracy)  # the name before the rename
        client.set_terminated(run_id)
    rows = _csv(tmp_path, uri)
    assert rows == [["run", "status", "test/accuracy"], ["older", "finished", "0.92"], ["old", "finished", "0.9"]]


@pytest.mark.parametrize("columns", [80, 120])
def test_the_table_is_readable_at_80_and_120_columns(store, columns, monkeypatch):
    root, uri = store
    monkeypatch.setenv("COLUMNS", str(columns))
    text = run_cnnpipe("compare", "--tracking-uri", uri, "--experiment", "sweep", cwd=root).stdout
    lines = text.splitlines()
    assert lines[0].strip() == "sweep: best test/acc first" and max(map(len, lines)) <= columns
    assert "…" not in text and "left out" not in text  # the default columns and four params fit both widths
    rows = {name: next(line.split() for line in lines if line.startswith(f"{name} ")) for name in NAMES_BEST_FIRST}
    assert {"finished", "0.91", "6210"} <= set(rows["lr-0.01-adamw-width-2"])  # whole numbers on the run's line
    assert ("0.003" in rows["bold-fox-123"]) == (columns == 120)  # params beside the metrics, or below at 80
    assert "params that differ" in text if columns == 80 else "evaluate." in lines[1]


@pytest.mark.parametrize("width", [30, 40, 50, 60, 70, 80, 90, 100, 120, 160, 200])
def test_no_cell_is_cut_at_any_width(store, width):
    root, uri = store
    table = compare(uri, "sweep", "accuracy")
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(*table.to_tables("sweep", width))
    text = console.export_text()
    assert "…" not in text
    assert max(map(len, text.splitlines())) <= width
    words = text.split()
    if width >= 40:  # narrower than a run name and its accuracy, a name folds onto the next line
        assert all(name in words for name in NAMES_BEST_FIRST)
    if "left out at" not in text:  # every value is on screen, or the note names what is not
        assert all(cell in words for row in table.rows for cell in row if cell)


def test_a_pipe_without_columns_is_80_wide(store):
    root, uri = store
    env = {key: value for key, value in os.environ.items() if key != "COLUMNS"}
    command = [sys.executable, "-m", "cnnpipe", "compare", "--tracking-uri", uri, "--experiment", "sweep"]
    result = subprocess.run(command, cwd=root, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    assert max(map(len, result.stdout.splitlines())) <= 80 and "params that differ" in result.stdout  # as at 80


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
