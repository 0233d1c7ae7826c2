"""`cnnpipe export` and the DVC stage `export`: ONNX and TorchScript files that answer as PyTorch does on real
images, carry their class names and input spec, and are logged into the training's MLflow run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from tests.faults import assert_kept, assert_refused, refused_and_kept, run, snapshot
from tests.helpers import run_cnnpipe, write_params
from tests.images import make_image_folder
from tests.test_predict import CLASSES, train_once


@pytest.fixture(scope="module")
def exported(tmp_path_factory, prepared_data) -> Path:
    """The session's trained folder with `cnnpipe export` run in it once, as DVC runs it; the training run's
    status and end time before, in before.json."""
    root = train_once(tmp_path_factory.getbasetemp() / "trained", prepared_data)
    run_id = json.loads((root / "data/train/run.json").read_text())["run_id"]
    run = MlflowClient(f"sqlite:///{root}/mlflow.db").get_run(run_id)
    (root / "before.json").write_text(json.dumps({"end_time": run.info.end_time, "status": run.info.status}))
    run_cnnpipe("export", cwd=root)
    return root


def _test_batch(root: Path, count: int) -> np.ndarray:
    return np.load(root / "data/pulled/test_images.npy")[:count].transpose(0, 3, 1, 2) / np.float32(255)


def test_both_files_answer_as_pytorch_on_a_thousand_real_images(exported):
    record = json.loads((exported / "data/export/export.json").read_text())
    assert record["classes"] == CLASSES and record["input"] == [1, 28, 28]
    assert record["formats"]["onnx"]["opset"] == 18
    for fmt in ("onnx", "torchscript"):
        check = record["formats"][fmt]["verification"]
        assert check["images"] == 1000 and check["max_abs_diff"] <= 1e-4 and check["top1_agreement"] == 1.0
        assert (exported / "data/export" / record["formats"][fmt]["file"]).stat().st_size > 0


def test_the_onnx_file_has_a_dynamic_batch_and_its_metadata(exported):
    import onnx
    import onnxruntime

    from cnnpipe.inference.model import from_checkpoint

    path = exported / "data/export/model.onnx"
    meta = {entry.key: entry.value for entry in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["cnnpipe.classes"]) == CLASSES
    spec = json.loads(meta["cnnpipe.input"])
    assert spec["shape"] == ["N", 1, 28, 28] and spec["range"] == [0, 1] and spec["dtype"] == "float32"
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (batch,) = session.get_inputs()[0].shape[:1]
    assert isinstance(batch, str)  # a named, dynamic axis
    reference = from_checkpoint(exported / "data/train/model.ckpt").probabilities
    for count in (1, 7, 300):
        images = _test_batch(exported, count)
        (answer,) = session.run(None, {"images": images})
        assert answer.shape == (count, 3) and np.abs(answer - reference(images)).max() <= 1e-4


def test_the_torchscript_file_loads_without_cnnpipe_and_names_its_classes(exported):
    files = {"cnnpipe.json": ""}
    module = torch.jit.load(str(exported / "data/export/model.pt"), _extra_files=files)
    meta = json.loads(files["cnnpipe.json"])
    assert json.loads(meta["cnnpipe.classes"]) == CLASSES
    with torch.no_grad():
        assert module(torch.from_numpy(_test_batch(exported, 5))).shape == (5, 3)


def test_the_files_are_logged_into_the_training_run_which_keeps_its_end(exported):
    import mlflow.pyfunc

    record = json.loads((exported / "data/train/run.json").read_text())
    client = MlflowClient(f"sqlite:///{exported}/mlflow.db")
    logged = {artifact.path for artifact in client.list_artifacts(record["run_id"], "export")}
    assert logged == {"export/model.onnx", "export/model.pt", "export/export.json"}
    run = client.get_run(record["run_id"])
    assert json.loads((exported / "before.json").read_text()) == {
        "end_time": run.info.end_time,
        "status": run.info.status,
    }
    mlflow.set_tracking_uri(f"sqlite:///{exported}/mlflow.db")
    onnx_model = mlflow.pyfunc.load_model(f"runs:/{record['run_id']}/onnx")  # the onnx flavour, on onnxruntime
    assert onnx_model.metadata.metadata["classes"] == CLASSES
    answer = onnx_model.predict(_test_batch(exported, 4))
    assert np.asarray(answer["probabilities"] if isinstance(answer, dict) else answer).shape == (4, 3)


def test_one_format_to_a_path_of_its_own(exported, tmp_path):
    before = (exported / "data/export/export.json").read_text()
    result = run_cnnpipe("export", "--format", "torchscript", "--output", str(tmp_path / "m.pt"), cwd=exported)
    assert f"-> {tmp_path / 'm.pt'}" in result.stdout and "1000 real images" in result.stdout
    assert sorted(path.name for path in tmp_path.iterdir()) == ["m.pt"]  # no temporary file left
    assert (exported / "data/export/export.json").read_text() == before


def test_a_file_that_differs_from_pytorch_is_refused_and_the_old_export_kept(exported):
    params = (exported / "params.yaml").read_text()
    before = snapshot(exported)
    try:  # in a process of its own: the exporter's debug logging would reach the in-process harness's stderr
        (exported / "params.yaml").write_text(params.replace("tolerance: 0.0001", "tolerance: 1.0e-12"))
        result = run("export", cwd=exported)
    finally:
        (exported / "params.yaml").write_text(params)
    line = assert_refused(result, "model.onnx", "differently from PyTorch", "nothing was written")
    assert_kept(before, snapshot(exported))
    assert "export" in line


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (("--format", "tflite"), ("--format", "'tflite'", "onnx or torchscript")),
        (("--output", "m.onnx"), ("--output", "needs --format")),
        (("--format", "onnx", "--output", "missing/m.onnx"), ("--output", "missing does not exist")),
        (("--format", "onnx", "--output", "data"), ("--output", "is a directory")),
    ],
    ids=["unknown-format", "output-without-format", "missing-folder", "a-directory"],
)
def test_bad_options_are_refused(exported, args, names):
    refused_and_kept(exported, "export", *args, names=names)


def test_a_missing_model_is_refused(workdir):
    refused_and_kept(workdir, "export", names=("data/train/model.ckpt", "no trained model"))


def test_a_model_trained_on_other_channels_than_the_pulled_images_is_refused(exported, tmp_path):
    """The verification images are data/pulled's: a model of greyscale images cannot be checked on RGB ones."""
    shutil.copytree(exported / "data/train", tmp_path / "data/train")
    shutil.copy(exported / "params.yaml", tmp_path / "params.yaml")
    make_image_folder(tmp_path / "colour", classes=("a", "b"), size=(28, 28), per_class=8)
    raw = yaml.safe_load((exported / "params.yaml").read_text())
    raw["data"].update(source="imagefolder", path=str(tmp_path / "colour"), classes=[])
    write_params(tmp_path / "pull.yaml", raw)
    run_cnnpipe("--params", "pull.yaml", "pull", cwd=tmp_path)
    refused_and_kept(tmp_path, "export", names=("model.ckpt", "[1, 28, 28]", "[3, 28, 28]", "other channels"))
