"""Fault injection for what the tools write and read: no command writes over its own input or a stage's output
(export, kernels, predict --output, compare --output), export's --output suffix and unreachable tolerance, and
predict's inputs that are no regular files (a named pipe, a device) or folders reached through links.

Real things only: one small real training shared with test_predict.py (copied per case), a real SQLite MLflow
store, real image files, a real named pipe and device file. Each refusal also checks the digest of the input it
protects and that no temporary folder is left in $TMPDIR.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.faults import assert_refused, invoke, refused_and_kept, run
from tests.helpers import SMALL_RUN, write_params
from tests.test_predict import train_once

pytestmark = pytest.mark.xdist_group("faults-outputs")  # one worker: its tiny training is made once


@pytest.fixture(scope="module")
def trained(tmp_path_factory, prepared_data) -> Path:
    """The session's one small training (test_predict.py's): never written to, only copied."""
    return train_once(tmp_path_factory.getbasetemp() / "trained", prepared_data)


@pytest.fixture
def project(trained, tmp_path) -> Path:
    """A private copy of the trained folder with its own MLflow store (a relative tracking URI), and pic.png."""
    root = Path(shutil.copytree(trained, tmp_path / "project", ignore=shutil.ignore_patterns("cache")))
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["mlflow"]["tracking_uri"] = "sqlite:///mlflow.db"
    write_params(root / "params.yaml", raw)
    run_file = root / "data/train/run.json"
    run_file.write_text(run_file.read_text().replace(str(trained), str(root)))
    Image.fromarray(np.load(root / "data/pulled/test_images.npy")[0, ..., 0]).save(root / "pic.png")
    return root


@pytest.fixture
def sketch(tmp_path) -> Path:
    """For kernels: an image under data/, a figure under plots/, a metrics file; no model needed."""
    for folder in ("data", "plots", "metrics"):
        (tmp_path / folder).mkdir()
    Image.fromarray((np.arange(400).reshape(20, 20) % 256).astype(np.uint8)).save(tmp_path / "data/img.png")
    Image.new("L", (8, 8), 7).save(tmp_path / "plots/figure.png")
    (tmp_path / "metrics/test.json").write_text('{"accuracy": 0.9}\n')
    return tmp_path


@pytest.fixture
def scratch(tmp_path, monkeypatch) -> Iterator[Path]:
    """$TMPDIR for the call (tempfile caches it, so both are set), checked empty afterwards."""
    folder = tmp_path / "tmpdir"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    yield folder
    assert not _ours(folder), f"FAULT-LEFTOVER: {_ours(folder)} left in $TMPDIR"


def _ours(tmpdir: Path) -> list[str]:
    """cnnpipe's temporary folders in `tmpdir` (torch's compiler keeps a cache of its own there)."""
    return [path.name for path in tmpdir.glob("cnnpipe-*")]


def _sha(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def refused_keeping(root: Path, *args: str, names: tuple[str, ...], kept: tuple[str, ...] = ()) -> str:
    """refused_and_kept, and the files `kept` (inputs outside data/, metrics/, plots/ too) unchanged."""
    before = {name: _sha(root / name) for name in kept}
    problems, line = [], ""
    try:
        line = refused_and_kept(root, *args, names=names)
    except AssertionError as failure:
        problems.append(str(failure))
    lost = [name for name, digest in before.items() if _sha(root / name) != digest]
    if lost:
        problems.append(f"FAULT-LOST: {lost}")
    assert not problems, " | ".join(problems)
    return line


EXPORT = ("export", "--format")
STAGE_OUTPUTS = {  # id -> (export arguments, what the one line must name)
    "the trained model": ((*EXPORT, "onnx", "--output", "data/train/model.ckpt"), ("--output", "data/train")),
    "into data/export": ((*EXPORT, "onnx", "--output", "data/export/model.onnx"), ("--output", "data/export")),
    "into metrics": ((*EXPORT, "torchscript", "--output", "metrics/model.pt"), ("--output", "metrics")),
    "through ..": ((*EXPORT, "onnx", "--output", "plots/../data/train/model.onnx"), ("--output", "data/train")),
    "into the store's artifacts": (  # own case
        (*EXPORT, "torchscript", "--output", "mlruns/model.pt"),
        ("--output", "mlruns"),
    ),
}


@pytest.mark.parametrize(("args", "names"), STAGE_OUTPUTS.values(), ids=STAGE_OUTPUTS.keys())
def test_export_writes_into_no_stage_output(project, scratch, args, names):
    (project / "data/export").mkdir(exist_ok=True)  # as `dvc repro` leaves it
    refused_keeping(project, *args, names=names, kept=("data/train/model.ckpt",))


def test_export_over_a_link_to_the_trained_model_is_refused(project, scratch):
    (project / "link.onnx").symlink_to("data/train/model.ckpt")
    os.link(project / "data/train/model.ckpt", project / "hard.onnx")
    for name in ("link.onnx", "hard.onnx"):
        refused_keeping(project, *EXPORT, "onnx", "--output", name, names=("--output", name, "data/train/model.ckpt"))


def test_export_over_a_hard_link_to_its_params_is_refused(project, scratch):  # own case
    os.link(project / "params.yaml", project / "params.pt")
    refused_keeping(
        project, *EXPORT, "torchscript", "--output", "params.pt", names=("--output", "--params"), kept=("params.yaml",)
    )


@pytest.mark.parametrize(
    ("fmt", "output", "suffix"), [("onnx", "m.pt", ".onnx"), ("torchscript", "model.onnx", ".pt")], ids=["onnx", "ts"]
)
def test_an_export_suffix_that_disagrees_with_format_is_refused(project, scratch, fmt, output, suffix):
    line = refused_keeping(project, *EXPORT, fmt, "--output", output, names=("--output", output, suffix))
    assert not (project / output).exists(), line


def test_an_unreachable_tolerance_names_its_key_not_a_staging_path(project, tmp_path):
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["export"].update(tolerance=1e-30, verify_images=64)
    write_params(project / "params.yaml", raw)
    # a process of its own: the exporter's debug logging would reach the in-process harness's stderr
    result = run(*EXPORT, "onnx", "--output", "m.onnx", cwd=project, env={"TMPDIR": str(tmp_path)})
    line = assert_refused(result, "export.tolerance", "1e-30", "max |Δprob|")
    assert "/." not in line and ".m.onnx-" not in line, f"FAULT-UNCLEAR: a staging path named: {line}"
    assert not (project / "m.onnx").exists() and not list(project.glob(".m.onnx*")), "FAULT-LEFTOVER"


def test_kernels_writes_over_no_stage_output(sketch):
    kernels = ("kernels", "data/img.png", "--kernel", "sobel_x", "--output")
    refused_keeping(sketch, *kernels, "plots/figure.png", names=("--output", "plots"))


def test_kernels_over_a_hard_link_to_image_is_refused(sketch):
    os.link(sketch / "data/img.png", sketch / "same.png")
    kernels = ("kernels", "data/img.png", "--kernel", "sobel_x", "--output", "same.png")
    refused_keeping(sketch, *kernels, names=("--output", "same.png", "IMAGE"), kept=("data/img.png",))


def test_predict_writes_over_no_stage_output(project, scratch):
    refused_keeping(project, "predict", "pic.png", "--output", "metrics/test.json", names=("--output", "metrics"))


def test_predict_over_its_own_input_is_refused_before_anything_is_written(project, scratch):
    refused_keeping(project, "predict", "pic.png", "--output", "pic.png", names=("--output",), kept=("pic.png",))
    os.link(project / "pic.png", project / "preds.csv")
    refused_keeping(
        project, "predict", "pic.png", "--output", "preds.csv", names=("--output", "INPUT"), kept=("pic.png",)
    )


def test_predict_over_a_hard_link_to_its_model_is_refused(project, scratch):  # own case
    shutil.copy(project / "data/train/model.ckpt", project / "mine.ckpt")
    os.link(project / "mine.ckpt", project / "preds.csv")
    args = ("predict", "pic.png", "--model", "mine.ckpt", "--output", "preds.csv")
    refused_keeping(project, *args, names=("--output", "--model"), kept=("mine.ckpt",))


def test_compare_writes_over_no_mlflow_store(project):
    compare = ("compare", "--experiment", SMALL_RUN, "--tracking-uri", "sqlite:///mlflow.db", "--format", "csv")
    refused_keeping(project, *compare, "--output", "mlflow.db", names=("--output", "mlflow.db"), kept=("mlflow.db",))


def test_an_output_dvc_yaml_declares_is_refused_wherever_it_is(project):
    (project / "reports").mkdir()
    (project / "reports/summary.csv").write_text("run,accuracy\n")
    stage = {"cmd": "python summarise.py", "outs": [{"reports/summary.csv": {"cache": False}}]}
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"summarise": stage}}))
    compare = ("compare", "--experiment", SMALL_RUN, "--tracking-uri", "sqlite:///mlflow.db", "--format", "csv")
    args = (*compare, "--output", "reports/summary.csv")
    refused_keeping(project, *args, names=("--output", "reports/summary.csv"), kept=("reports/summary.csv",))


def test_compare_writes_into_no_stage_output(project):  # own case
    compare = ("compare", "--experiment", SMALL_RUN, "--tracking-uri", "sqlite:///mlflow.db", "--format", "md")
    refused_keeping(project, *compare, "--output", "plots/runs.md", names=("--output", "plots"))
    assert not (project / "plots/runs.md").exists()


def _rows(path: Path) -> dict[str, str]:
    """path -> error ('' for a prediction) of a predictions CSV."""
    import csv

    return {row["path"]: row["error"] for row in csv.DictReader(path.open())}


def test_a_named_pipe_among_predict_inputs_is_skipped_without_blocking(project, tmp_path):
    """In a process of its own: before, the pipe blocked the read forever; a killed predict left its temp folder."""
    os.mkfifo(project / "pipe.png")
    folder = tmp_path / "tmpdir"
    folder.mkdir()
    try:
        result = run(
            "predict", "pic.png", "pipe.png", "--output", "p.csv", cwd=project, env={"TMPDIR": str(folder)}, timeout=90
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"FAULT-HANG FAULT-LEFTOVER: predict blocked on the pipe for 90 s; left: {_ours(folder)}")
    assert "Traceback" not in result.stderr, f"FAULT-TRACEBACK: {result.stderr[-1500:]}"
    assert result.returncode == 1, f"FAULT-UNCLEAR: exit {result.returncode}: {result.stderr[-800:]}"
    assert "warning: skipped pipe.png: not a regular file (a named pipe)" in result.stderr, result.stderr
    assert _rows(project / "p.csv") == {"pic.png": "", "pipe.png": "not a regular file (a named pipe)"}
    assert not _ours(folder), f"FAULT-LEFTOVER: {_ours(folder)}"


class _Unblocker:
    """Opens a named pipe for writing once a reader waits on it (then closes it: end of file), so a read that
    would block forever ends; `freed` says whether a reader had to be freed."""

    def __init__(self, pipe: Path):
        self.pipe, self.freed, self.stop = pipe, False, threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self.stop.wait(0.2):
            try:
                os.close(os.open(self.pipe, os.O_WRONLY | os.O_NONBLOCK))  # ENXIO while no reader waits
            except OSError:
                continue
            self.freed = True

    def __enter__(self) -> _Unblocker:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def test_a_named_pipe_called_an_archive_is_not_opened(project, scratch):  # own case
    os.mkfifo(project / "pipe.tar.gz")
    with _Unblocker(project / "pipe.tar.gz") as unblocker:
        result = invoke("predict", "pic.png", "pipe.tar.gz", "--output", "p.csv", cwd=project)
    assert not unblocker.freed, "FAULT-HANG: predict opened the pipe and blocked until a writer came"
    assert "Traceback" not in result.stderr, f"FAULT-TRACEBACK: {result.stderr[-1500:]}"
    assert result.returncode == 1, f"FAULT-UNCLEAR: exit {result.returncode}: {result.stderr[-800:]}"
    assert _rows(project / "p.csv") == {"pic.png": "", "pipe.tar.gz": "not a regular file (a named pipe)"}


def test_a_device_file_among_predict_inputs_is_named_as_one(project, scratch):
    (project / "zero.png").symlink_to("/dev/zero")
    result = invoke("predict", "pic.png", "zero.png", "--output", "p.csv", cwd=project)
    assert "Traceback" not in result.stderr, f"FAULT-TRACEBACK: {result.stderr[-1500:]}"
    assert result.returncode == 1, f"FAULT-UNCLEAR: exit {result.returncode}: {result.stderr[-800:]}"
    rows = _rows(project / "p.csv")
    assert rows == {"pic.png": "", "zero.png": "not a regular file (a device)"}, f"FAULT-UNCLEAR: {rows}"


def _pictures(root: Path) -> Path:
    """photos/a/1.png, photos/linked -> ../more (more/2.png): a subfolder reached through a symbolic link."""
    for name in ("photos/a/1.png", "more/2.png"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (28, 28), 50).save(root / name)
    (root / "photos/linked").symlink_to("../more")
    return root / "photos"


def test_a_linked_subfolder_given_to_predict_is_followed(project, scratch):
    _pictures(project)
    result = invoke("predict", "photos", "--output", "p.csv", cwd=project)
    assert result.returncode == 0, f"FAULT-UNCLEAR: exit {result.returncode}: {result.stderr[-800:]}"
    rows = _rows(project / "p.csv")
    assert rows == {"photos/a/1.png": "", "photos/linked/2.png": ""}, f"FAULT-SILENT: {sorted(rows)}"


def test_a_link_loop_in_a_folder_is_walked_once_with_a_warning(project, scratch):
    _pictures(project)
    (project / "photos/a/back").symlink_to("..")
    (project / "more/self").symlink_to(".")
    result = invoke("predict", "photos", "--output", "p.csv", cwd=project)
    assert result.returncode == 0, f"FAULT-UNCLEAR: exit {result.returncode}: {result.stderr[-800:]}"
    assert sorted(_rows(project / "p.csv")) == ["photos/a/1.png", "photos/linked/2.png"]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and all("loop" in line for line in warnings), warnings
    assert {"photos/a/back", "photos/linked/self"} <= set(" ".join(warnings).replace(":", " ").split()), warnings
