"""`cnnpipe compare` against a real SQLite MLflow store: training runs with their evaluations as child runs.

The runs are made with MlflowClient itself, as the train and evaluate stages lay them out, so that these tests
pin the layout compare reads rather than the stages' own logging code; the files a report reads back are made by
the real analysis (analysis/report.describe) of two untrained presets.
"""

import base64
import csv
import html
import io
import os
import re
import subprocess
import sys

import pytest
import torch
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from rich.console import Console

from cnnpipe.analysis import models
from cnnpipe.analysis import report as fields
from cnnpipe.config import TORCHVISION_STAND_IN
from cnnpipe.tracking import compare_report as report
from cnnpipe.tracking.compare import PARENT_TAG, STAGE_TAG, compare, experiment_trainings
from tests import browser
from tests.faults import invoke, refused_and_kept
from tests.helpers import run_cnnpipe, write_params

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


def _run(client, name, stage, params, metrics, start, parent=None, status="FINISHED", experiment="sweep"):
    """A run as the stages log it; `start` orders the evaluations of one training."""
    tags = {STAGE_TAG: stage, **({PARENT_TAG: parent} if parent else {})}
    run = client.create_run(client.get_experiment_by_name(experiment).experiment_id, start, tags, name)
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
        summary |= {"train_time_s": 100.0 + number, "mean/gflops_per_sec": 1.5 + number}  # the sweep's order
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
        "0.9000",
        "0.1000",
        "0.9100",
        "0.3000",
        "6210",
        "28",
    ]
    assert rows[-1][6:9] == ["", "", "0.8100"]  # never evaluated: empty test cells, sorted last


def test_loss_sorts_ascending_and_writes_markdown(store):
    root, uri = store
    args = ("--tracking-uri", uri, "--experiment", "sweep", "--sort", "loss", "--format", "md", "--output", "r.md")
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
    assert rows == [["run", "status", "test/accuracy"], ["older", "finished", "0.9200"], ["old", "finished", "0.9000"]]


@pytest.mark.parametrize("columns", [80, 120])
def test_the_table_is_readable_at_80_and_120_columns(store, columns, monkeypatch):
    root, uri = store
    monkeypatch.setenv("COLUMNS", str(columns))
    text = run_cnnpipe("compare", "--tracking-uri", uri, "--experiment", "sweep", cwd=root).stdout
    lines = text.splitlines()
    assert lines[0].strip() == "sweep: best test/acc first" and max(map(len, lines)) <= columns
    assert "…" not in text  # at 80 the last metric gives way to the 24-character run names, and is named
    note = [line for line in lines if line.startswith("left out")]
    assert note == (["left out at 80 columns: rf_final; --format csv shows every column"] if columns == 80 else [])
    header = _csv(root, uri)[0]
    for table in re.split(r"\n(?=\s*(?:sweep: best|params that differ))", text):  # the metrics, the params below
        heading = table.splitlines()[1 : next(i for i, line in enumerate(table.splitlines()) if "───" in line)]
        assert {word for line in heading for word in line.split()} <= _header_lines(header)
    rows = {name: next(line.split() for line in lines if line.startswith(f"{name} ")) for name in NAMES_BEST_FIRST}
    assert {"finished", "0.9100", "6210"} <= set(rows["lr-0.01-adamw-width-2"])  # whole numbers on the run's line
    assert ("0.003" in rows["bold-fox-123"]) == (columns == 120)  # params beside the metrics, or below at 80
    assert "params that differ" in text if columns == 80 else "evaluate." in lines[1]


@pytest.mark.parametrize("width", [30, 40, 50, 60, 70, 80, 90, 100, 120, 160, 200])
def test_no_cell_is_cut_at_any_width(store, width):
    root, uri = store
    table = compare(experiment_trainings(uri, "sweep"), "accuracy")
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
        (("--experiment", "sweep", "--sort", "f1"), "cnnpipe: error: --sort: no run logged 'f1'; logged metrics:"),
    ],
)
def test_compare_bad_input_is_one_line_and_exit_2(store, args, message):
    root, uri = store
    result = run_cnnpipe("compare", "--tracking-uri", uri, *args, cwd=root, check=False)
    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(message)


def _header_lines(headers):
    """What one line of a wrapped header may be: a run of the pieces of a header split after / . or _."""
    pieces = [re.split(r"(?<=[/._])", header) for header in headers]
    return {"".join(parts[i:j]) for parts in pieces for i in range(len(parts)) for j in range(i + 1, len(parts) + 1)}


def test_columns_of_floats_have_4_decimals_and_whole_numbers_none(store):
    rows = _csv(*store, "--metrics", "test/acc,test/loss,best/val/acc,test/count,mean/images_per_sec")
    assert rows[0][6:] == ["test/acc", "test/loss", "best/val/acc", "test/count", "mean/images_per_sec"]
    for row in rows[1:-1]:
        assert all(re.fullmatch(r"0\.\d{4}", cell) for cell in row[6:9]), row
        assert row[9:] == ["3000", "6210"]


@pytest.mark.parametrize(
    ("flag", "sort", "key", "order"),
    [
        ("--sort", "accuracy", "test/acc", NAMES_BEST_FIRST),
        ("--metric", "loss", "test/loss", NAMES_BEST_FIRST),  # the old name; a loss ascending
        ("--sort", "train_time_s", "train_time_s", [name for name, *_ in SWEEP]),  # a time ascending
        ("--sort", "gflops_per_sec", "mean/gflops_per_sec", [name for name, *_ in SWEEP][::-1]),  # else descending
    ],
)
def test_sort_by_any_metric_best_first(store, flag, sort, key, order):
    rows = _csv(*store, flag, sort)
    assert rows[0][6] == key and [row[0] for row in rows[1:]] == order


# name, preset, lr, data params, val/acc per epoch, test accuracies (a step or an evaluation each: the last shows)
REPORTED = (
    (
        "lenet-lr-0.01",
        "lenet5",
        0.01,
        {"data.source": "fashion-mnist", "data.path": TORCHVISION_STAND_IN, "data.classes": ["Trouser", "Bag"]},
        (0.61, 0.74, 0.8132),
        (0.6, 0.8047),
    ),
    (
        "lecture-lr-0.001",
        "lecture",
        0.001,
        {"data.source": "imagefolder", "data.path": "/data/leaves", "data.classes": []},
        (0.52, 0.66, 0.7018, 0.7254),
        (0.7188,),
    ),
)
REPORTED_NAMES = [name for name, *_ in REPORTED]


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """Two trainings with all a report reads back: params, val curves a step per epoch, receptive_field.json and
    first_layer_kernels.png. The first is evaluated in child runs (the newest evaluation's test/acc shows), the
    second carries test/acc itself, a step per evaluation (the latest shows). Beside them two trainings share a
    name, and a second experiment has a run of its own. Returns the folder, the store and what each run logged."""
    root = tmp_path_factory.mktemp("reported")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    for experiment in ("reported", "other"):
        client.create_experiment(experiment, (root / "artifacts" / experiment).as_uri())
    logged = {}
    for number, (name, preset, lr, data, curve, tests) in enumerate(REPORTED):
        params = {"seed": 42, "model.preset": preset, "train.lr": lr, **data}
        run_id = _run(client, name, "train", params, {"best/val/acc": max(curve)}, 10 * number, experiment="reported")
        history = [Metric("val/acc", acc, 0, epoch) for epoch, acc in enumerate(curve)]
        history += [Metric("val/loss", 1 - acc, 0, epoch) for epoch, acc in enumerate(curve)]
        if number == 0:
            for step, test in enumerate(tests, start=1):
                _run(client, f"{name}-eval", "evaluate", {}, {"test/acc": test}, step, run_id, experiment="reported")
        else:
            history += [Metric("test/acc", test, 0, step) for step, test in enumerate(tests)]
        client.log_batch(run_id, history)
        folder = root / name
        folder.mkdir()
        fields.describe(models.network(preset, None, (1, 28, 28), 10), torch.rand(4, 1, 28, 28), folder)
        for file in (report.FIELD_FILE, report.KERNELS_FILE):
            client.log_artifact(run_id, str(folder / file))
        table = fields.rows(fields.from_json((folder / report.FIELD_FILE).read_text()))
        logged[name] = {"table": table, "kernels": (folder / report.KERNELS_FILE).read_bytes(), "curve": curve}
    for number in range(2):
        _run(client, "twin", "train", {"data.source": "mnist"}, {}, 100 + number, experiment="reported")
    _run(client, "elsewhere", "train", {}, {"test/acc": 0.5}, 200, experiment="other")
    return root, uri, logged


def _names(root, *args):
    """The rows' run names of `cnnpipe compare ARGS --format csv` in `root`."""
    result = invoke("compare", *args, "--format", "csv", cwd=root)
    assert result.returncode == 0, result.stderr
    return [row[0] for row in csv.reader(io.StringIO(result.stdout))][1:]


def test_experiment_data_and_run_names_pick_the_rows(reported, raw_params):
    root, uri, _ = reported
    raw_params["mlflow"].update(tracking_uri=uri, experiment="reported")
    write_params(root / "params.yaml", raw_params)
    assert sorted(_names(root)) == sorted([*REPORTED_NAMES, "twin", "twin"])  # the experiment of params.yaml
    assert _names(root, "--experiment", "other", "--tracking-uri", uri) == ["elsewhere"]
    assert _names(root, "--data", "leaves") == ["lecture-lr-0.001"]  # data.name: the folder's name
    assert _names(root, "--data", "fashion-mnist-Trouser-Bag") == ["lenet-lr-0.01"]  # and a subset's classes
    assert _names(root, *REPORTED_NAMES[::-1]) == REPORTED_NAMES  # best first, as always
    line = refused_and_kept(root, "compare", "--data", "cifar10", names=("--data", "'cifar10'"))
    assert line.endswith("data sets: fashion-mnist-Trouser-Bag, leaves, mnist")


def test_the_latest_test_acc_shows_and_a_run_without_one_has_an_empty_cell(reported):
    root, uri, _ = reported
    result = invoke("compare", "--tracking-uri", uri, "--experiment", "reported", "--format", "csv", cwd=root)
    rows = list(csv.reader(io.StringIO(result.stdout)))
    column = rows[0].index("test/acc")
    assert {row[0]: row[column] for row in rows[1:]} == {
        "lenet-lr-0.01": "0.8047",
        "lecture-lr-0.001": "0.7188",
        "twin": "",
    }


def _report(root, uri, output, *runs):
    return invoke(
        "compare", *runs, "--tracking-uri", uri, "--experiment", "reported", "--output", str(output), cwd=root
    )


def _html_rows(rows):
    return ["<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows]


def _md_rows(rows):
    return ["| " + " | ".join(html.escape(cell, quote=False) for cell in row) + " |" for row in rows]


@pytest.mark.parametrize("suffix", [".html", ".md"])
def test_the_report_puts_the_named_runs_side_by_side(reported, suffix, tmp_path):
    root, uri, logged = reported
    output, folder = tmp_path / f"runs{suffix}", tmp_path / "runs_files"
    output.write_text(f"<!-- {report.MARK} --> an earlier report, which is written over")
    if suffix == ".md":  # and its pictures, of three runs: the folder is replaced whole
        folder.mkdir()
        (folder / "kernels_3.png").write_bytes(b"an earlier picture")
    result = _report(root, uri, output, *REPORTED_NAMES)
    assert result.returncode == 0 and result.stdout.strip() == f"{output}: 2 runs of reported side by side"
    text = output.read_text()
    metrics = [["train.lr", "0.01", "0.001"], ["test/acc", "0.8047", "0.7188"], ["best/val/acc", "0.8132", "0.7254"]]
    rows = _html_rows if suffix == ".html" else _md_rows
    assert all(row in text for row in rows(metrics))  # the params that differ and the metrics, a run per column
    assert "seed" not in text  # the same in both
    tables = [rows(run["table"]) for run in logged.values()]
    assert tables[0] != tables[1] and all(row in text for table in tables for row in table)
    assert text.index(REPORTED_NAMES[0]) < text.index(REPORTED_NAMES[1])  # in the order named
    if suffix == ".html":  # one file: every picture inside
        assert not folder.exists() and text.count("data:image/png;base64,") == 4  # 2 curves, 2 kernels
        assert all(base64.b64encode(run["kernels"]).decode() in text for run in logged.values())
        assert '<img src="data:image/png;base64,' in text and 'alt="val/acc"' in text and 'alt="val/loss"' in text
    else:
        assert sorted(path.name for path in folder.iterdir()) == [
            "kernels_1.png",
            "kernels_2.png",
            "val_acc.png",
            "val_loss.png",
        ]
        assert "![val/acc](runs_files/val_acc.png) ![val/loss](runs_files/val_loss.png)" in text
        assert "| ![kernels](runs_files/kernels_1.png) | ![kernels](runs_files/kernels_2.png) |" in text
        assert [(folder / f"kernels_{n}.png").read_bytes() for n in (1, 2)] == [
            run["kernels"] for run in logged.values()
        ]


def test_the_curves_of_both_runs_are_overlaid(reported):
    root, uri, logged = reported
    runs = [run for run in experiment_trainings(uri, "reported") if run.name in REPORTED_NAMES]
    built = report.build(uri, "reported", runs, ("test/acc",))
    for key, value in (("val/acc", lambda acc: acc), ("val/loss", lambda acc: 1 - acc)):
        assert built.curves[key] == {  # one figure per metric, a line per run: what overlaid_curves plots
            run.name: (list(range(len(logged[run.name]["curve"]))), [value(acc) for acc in logged[run.name]["curve"]])
            for run in runs
        }


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (("nope", "lenet-lr-0.01"), ("RUN 'nope'", "runs: lecture-lr-0.001, lenet-lr-0.01, twin, twin")),
        (("twin", "lenet-lr-0.01"), ("RUN 'twin'", "2 runs", "give an id")),
        (("lenet-lr-0.01",), ("--output", "two or more")),
        (
            ("lenet-lr-0.01", "lecture-lr-0.001", "--experiment", "nope"),
            ("--experiment", "'nope'", "Default, other, reported"),
        ),
        (("lenet-lr-0.01", "lecture-lr-0.001", "--data", "nope"), ("--data", "'nope'")),
    ],
)
def test_a_refused_report_writes_nothing(reported, args, names, tmp_path):
    root, uri, _ = reported
    output = tmp_path / "runs.md"
    args = ("compare", "--tracking-uri", uri, "--experiment", "reported", *args, "--output", str(output))
    refused_and_kept(root, *args, names=names)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("existing", "output"),
    [("README.md", "README.md"), ("runs.txt", "runs.txt"), ("runs_files/notes.txt", "runs.md")],
)
def test_what_is_no_report_is_never_written_over(reported, tmp_path, existing, output):
    root, uri, _ = reported
    (tmp_path / existing).parent.mkdir(exist_ok=True)
    (tmp_path / existing).write_text("# my notes\n")
    args = ("compare", *REPORTED_NAMES, "--tracking-uri", uri, "--output", str(tmp_path / output))
    refused_and_kept(root, *args, names=("--output", existing.split("/")[0]))
    assert (tmp_path / existing).read_text() == "# my notes\n" and len(list(tmp_path.rglob("*"))) == existing.count(
        "/"
    ) + 1


def test_an_unknown_sort_metric_writes_nothing(reported, tmp_path):
    root, uri, _ = reported
    args = ("compare", "--tracking-uri", uri, "--experiment", "reported", "--sort", "f1", "--format", "md")
    refused_and_kept(root, *args, "--output", str(tmp_path / "t.md"), names=("--sort", "'f1'"))
    assert list(tmp_path.iterdir()) == []


def test_the_html_report_opens_offline_in_a_browser(reported, tmp_path):
    """The screenshot is for a person to look at: the curves overlaid, the tables and kernels side by side."""
    root, uri, _ = reported
    output = tmp_path / "runs.html"
    assert _report(root, uri, output, *REPORTED_NAMES).returncode == 0
    dom = browser.capture(output.as_uri(), browser.screenshot_dir() / "compare-report.png", window=(1600, 2200))
    text = browser.visible_text(dom)
    assert all(name in text for name in REPORTED_NAMES) and "0.8047" in text and "0.7188" in text
    assert re.findall(r'<img src="data:image/png;base64,', dom) and "not logged" not in text
