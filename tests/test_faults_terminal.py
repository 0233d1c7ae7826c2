"""Text from users and stores reaches the terminal as text: never as Rich markup, emoji or control sequences.

A run name, a param value, an experiment name, a file or folder name is whatever a person or a store made it:
`[/b]` is no closing tag, `:smile:` no emoji, and an ESC or BEL is shown escaped (`\\x1b`), as an OSC sequence
would retitle the terminal and a CSI one recolour it. A file that cnnpipe writes (--output) keeps the real
characters where its format holds them safely (CSV). A COLUMNS of 0, below 0 or no number is no width.
The runs are made with MlflowClient in a real SQLite store; predict and export use test_predict's one training.
"""

from __future__ import annotations

import csv
import os
import subprocess
from pathlib import Path

import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from PIL import Image

from tests.faults import assert_kept, invoke, refused_and_kept, run, snapshot
from tests.helpers import small_run_params, write_params
from tests.test_predict import train_once

pytestmark = pytest.mark.xdist_group("faults-terminal")  # one worker: its tiny training is made once

OSC = "\x1b]0;owned\x07\x1b[31m"  # retitles the terminal, then turns its text red
SHOWN_OSC = "\\x1b]0;owned\\x07\\x1b[31m"  # how cnnpipe shows it
EXPERIMENT = f"sweep{OSC}[/b]"
EVIL = f"evil{OSC}"  # a run name
MARKUP = "[bold]fox[/b]"  # a run name that is no markup
MESSY = "line\nbreak\ttab\u202eexe.png|pipe"  # a run name: a newline, a tab, a right-to-left override, a pipe
RAW = ("\x1b", "\x07", "\x9b", "\u202e")  # none of these may reach a terminal


def _run(client: MlflowClient, experiment_id: str, name: str, lr: str, accuracy: float) -> str:
    run = client.create_run(experiment_id, 0, {"cnnpipe.stage": "train"}, name)
    curve = [Metric("val/acc", accuracy - 0.1 + step / 20, step, step) for step in range(3)]
    client.log_batch(run.info.run_id, [Metric("test/acc", accuracy, 0, 0), *curve], [Param("train.lr", lr)])
    client.set_terminated(run.info.run_id)
    return run.info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[Path, str, dict[str, str]]:
    """A real SQLite MLflow store: an experiment and runs whose names and param values carry ESC, BEL, an OSC
    sequence, Rich markup, a newline, a tab and a bidi override. Returns its folder, URI and run name -> id."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment(EXPERIMENT)
    runs = {
        EVIL: _run(client, experiment, EVIL, f"0.01{OSC}[bold]", 0.9),
        MARKUP: _run(client, experiment, MARKUP, "0.001", 0.8),
        MESSY: _run(client, experiment, MESSY, "0.1", 0.7),
    }
    plain = client.create_experiment("plain")
    for name, accuracy in (("calm-heron", 0.9), ("bold-fox", 0.8)):
        _run(client, plain, name, str(accuracy / 100), accuracy)
    return root, uri, runs


def _compare(store, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    root, uri, _ = store
    return invoke("compare", "--experiment", EXPERIMENT, "--tracking-uri", uri, *args, cwd=root, env=env)


def assert_shown(result: subprocess.CompletedProcess, *visible: str, code: int = 0) -> None:
    """Exit `code`, no traceback, no raw control character on stdout or stderr, and each of `visible` in them."""
    both = result.stdout + result.stderr
    assert "Traceback" not in both, f"FAULT-TRACEBACK: {result.stderr[-1500:]}"
    assert result.returncode == code, f"FAULT-UNCLEAR: exit {result.returncode}, not {code}: {result.stderr[-800:]}"
    raw = [character for character in RAW if character in both]
    assert not raw, f"FAULT-SILENT: raw {raw} reached the terminal: {both[-800:]!r}"
    for text in visible:
        assert text in both, f"FAULT-SILENT: {text!r} not shown: {both[-1500:]!r}"


def test_compare_table_shows_names_escaped(store):
    assert_shown(_compare(store), f"evil{SHOWN_OSC}", MARKUP, f"0.01{SHOWN_OSC}[bold]", f"sweep{SHOWN_OSC}[/b]")


def test_compare_markdown_on_stdout_shows_names_escaped(store):
    result = _compare(store, "--format", "md")
    assert_shown(result, f"| evil{SHOWN_OSC} |", f"| {MARKUP} |")


def test_compare_csv_on_stdout_shows_names_escaped(store):
    assert_shown(_compare(store, "--format", "csv"), f"evil{SHOWN_OSC},", MARKUP)


def test_compare_csv_file_keeps_the_real_names(store, tmp_path):
    result = _compare(store, "--format", "csv", "--output", str(tmp_path / "runs.csv"))
    assert_shown(result)
    with (tmp_path / "runs.csv").open(newline="") as handle:
        names = [row["run"] for row in csv.DictReader(handle)]
    assert sorted(names) == sorted([EVIL, MARKUP, MESSY]), f"FAULT-SILENT: the CSV file changed the names: {names}"


@pytest.mark.parametrize("suffix", [".html", ".md"])
def test_compare_report_shows_names_escaped(store, tmp_path, suffix):
    _, _, runs = store
    output = tmp_path / f"report{suffix}"
    result = _compare(store, runs[EVIL], runs[MARKUP], "--output", str(output))
    assert_shown(result, str(output))
    text = output.read_text()
    raw = [character for character in RAW if character in text]
    assert not raw, f"FAULT-SILENT: raw {raw} in the report {output.name}"
    assert f"evil{SHOWN_OSC}" in text and MARKUP in text, f"FAULT-SILENT: a run name is missing from {output.name}"


@pytest.mark.parametrize("columns", ["0", "-5", "abc", "²"])  # own case: ², a digit that int() cannot read
def test_compare_with_a_columns_of_no_width_prints_the_table(store, columns):
    """In a fresh process: Rich reads COLUMNS when cnnpipe's console is made, at import. Plain run names."""
    root, uri, _ = store
    result = run("compare", "--experiment", "plain", "--tracking-uri", uri, cwd=root, env={"COLUMNS": columns})
    assert_shown(result, "calm-heron", "bold-fox", "test/acc")


def test_compare_keeps_each_run_on_its_own_row(store):  # own case
    """A newline in a run name is no new row, in the table or in Markdown, and a bidi override turns no text."""
    result = _compare(store, "--format", "md")
    assert_shown(result, "line\\nbreak\\ttab\\u202eexe.png\\|pipe")
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) == 2 + 3, f"FAULT-SILENT: a run name broke the Markdown table: {result.stdout!r}"
    table = _compare(store)
    assert_shown(table, "line\\nbreak\\ttab\\u202eexe.png|pipe")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, prepared_data) -> Path:
    """test_predict's one small training, made by whichever module of the session asks first."""
    return train_once(tmp_path_factory.getbasetemp() / "trained", prepared_data)


@pytest.fixture
def model(trained) -> Path:
    """The trained folder, checked unchanged after the test."""
    before = snapshot(trained)
    yield trained
    assert_kept(before, snapshot(trained))


def _image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (28, 28), 90).save(path, "PNG")
    return path


def test_predict_names_of_markup_shown_literally(model, tmp_path):
    folder = tmp_path / "[bold]x"
    _image(folder / "[/b]cat.png")
    _image(folder / ":smile:.png")
    output = folder / "[/b]p.csv"  # in the folder `[` that `[/b]cat.png` made
    result = invoke("predict", str(folder), "--output", str(output), cwd=model)
    assert_shown(result, str(output))
    assert "[/b]cat.png" in output.read_text(), f"FAULT-SILENT: {output.read_text()}"


def test_predict_csv_on_stdout_shows_names_literally(model, tmp_path):
    folder = tmp_path / "[bold]x"
    _image(folder / "[/b]cat.png")
    _image(folder / f"dog{OSC}.png")
    result = invoke("predict", str(folder), cwd=model)
    assert_shown(result, "[/b]cat.png", f"dog{SHOWN_OSC}.png")


def test_predict_warning_and_note_show_names_escaped(model, tmp_path):
    folder = tmp_path / f"in{OSC}[/b]"
    _image(folder / "ok.png")
    (folder / f"broken{OSC}.png").write_bytes(b"not an image")
    (folder / f"notes{OSC}.txt").write_text("a note")
    result = invoke("predict", str(folder), cwd=model)
    assert_shown(result, f"broken{SHOWN_OSC}.png", f"in{SHOWN_OSC}[/b]", code=1)


def test_predict_of_a_file_name_that_is_no_utf8(model, tmp_path):  # own case
    """Linux allows any bytes in a name: shown escaped on the terminal, kept as they were in the CSV file."""
    folder = tmp_path / "bytes"
    name = os.fsdecode(b"caf\xe9.png")  # Latin-1, as an old camera or a zip of another system wrote it
    _image(folder / name)
    output = tmp_path / "p.csv"
    assert_shown(invoke("predict", str(folder), "--output", str(output), cwd=model))
    assert os.fsencode(name) in output.read_bytes(), f"FAULT-SILENT: {output.read_bytes()!r}"
    process = run("predict", str(folder), cwd=model)  # the real stdout, which refuses what is no UTF-8
    assert_shown(process, "caf\\udce9.png")


def test_export_to_a_folder_named_as_markup(model, tmp_path):
    output = tmp_path / "[bold]x" / "[/b]model.pt"
    output.parent.mkdir(parents=True)
    result = invoke("export", "--format", "torchscript", "--output", str(output), cwd=model)
    assert_shown(result, str(output))
    assert output.is_file(), "FAULT-SILENT: the export was not written"


def test_kernels_output_named_as_markup(tmp_path):  # own case
    image = _image(tmp_path / "[bold]in.png")
    (tmp_path / "x[").mkdir()  # a file name holds no slash: `[/b]` spans a folder `x[` and a file `b]...`
    output = tmp_path / f"x[/b]out{OSC}.png"
    result = invoke("kernels", str(image), "--kernel", "sobel_x", "--output", str(output), cwd=tmp_path)
    assert_shown(result, "x[/b]out\\x1b")
    assert output.is_file(), "FAULT-SILENT: the feature map was not written"


def test_check_of_a_params_file_named_as_markup(tmp_path, raw_params):  # own case
    (tmp_path / "[").mkdir()
    write_params(tmp_path / "[/b]p:smile:.yaml", small_run_params(raw_params, tmp_path))
    result = invoke("--params", "[/b]p:smile:.yaml", "check", "--input", "1,28,28", "--classes", "3", cwd=tmp_path)
    assert_shown(result, "[/b]p:smile:.yaml: valid")


@pytest.mark.parametrize(
    "name, shown",
    [
        (f"x[/b]{OSC}.yaml", f"x[/b]{SHOWN_OSC}.yaml"),
        ("x\ny.yaml", "x y.yaml"),  # own case: a newline in the name makes no second line
    ],
)
def test_error_line_shows_the_name_escaped(tmp_path, name, shown):
    line = refused_and_kept(tmp_path, "--params", name, "check", names=(shown,))
    assert not [c for c in RAW if c in line], f"FAULT-SILENT: raw control characters in {line!r}"
