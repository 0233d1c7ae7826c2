"""The registered model behind a real `mlflow models serve` on 127.0.0.1: answers with class names, documents
its input, and refuses what is no [N, C, H, W] image batch in [0, 1] in one short line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow.models
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import BIN, SMALL_RUN
from tests.mlflow_server import free_port
from tests.test_predict import CLASSES, train_once


@pytest.fixture(scope="module")
def served(tmp_path_factory, prepared_data):
    """models:/NAME@champion served by MLflow's own scoring server, in the environment of the tests."""
    root = train_once(tmp_path_factory.getbasetemp() / "trained", prepared_data)
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db", "PATH": f"{BIN}:{os.environ['PATH']}"}
    command = [str(Path(BIN) / "mlflow"), "models", "serve", "-m", f"models:/{SMALL_RUN}@champion"]
    command += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    log = (root / "serve.log").open("w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, (root / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, (root / "serve.log").read_text()[-3000:]
                time.sleep(0.5)
        yield root, url
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the CLI and its uvicorn worker
        process.wait()


def _post(url: str, body: dict) -> tuple[int, str]:
    request = urllib.request.Request(
        f"{url}/invocations", json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _images(root: Path, count: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.load(root / "data/pulled/test_images.npy")[-count:]
    labels = np.load(root / "data/pulled/test_labels.npy")[-count:]
    return images.transpose(0, 3, 1, 2) / np.float32(255), labels


def test_real_test_images_get_class_names_and_probabilities(served):
    root, url = served
    images, labels = _images(root, 200)
    status, text = _post(url, {"inputs": images.tolist()})
    assert status == 200, text[:500]
    rows = json.loads(text)["predictions"]
    assert len(rows) == 200 and list(rows[0]) == ["class", "probability", *CLASSES]
    for row in rows:
        assert row["class"] in CLASSES and row["probability"] == max(row[name] for name in CLASSES)
        assert sum(row[name] for name in CLASSES) == pytest.approx(1, abs=1e-5)
    assert np.mean([row["class"] == CLASSES[label] for row, label in zip(rows, labels, strict=True)]) >= 0.8


@pytest.mark.parametrize(
    ("change", "expected"),
    [(lambda x: x * 255, "values 0..255; divide 8-bit pixels by 255"), (lambda x: x - 0.5, "values -0.5..")],
    ids=["8-bit", "negative"],
)
def test_values_outside_0_1_are_refused_with_a_clear_message(served, change, expected):
    root, url = served
    images, _ = _images(root, 2)
    status, text = _post(url, {"inputs": change(images).tolist()})
    answer = json.loads(text)
    assert status == 400 and answer["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "[N, 1, 28, 28] with values in [0, 1]" in answer["message"] and expected in answer["message"]
    assert len(text) < 400  # the input is not repeated


def test_nan_is_no_value_in_0_1():
    from cnnpipe.inference.served import ImageClassifier, InputError

    model = ImageClassifier()
    model.classes, model.shape = CLASSES, (1, 2, 2)
    with pytest.raises(InputError, match=r"got values 0\.\.0\.5 and NaN or infinity"):
        model.check(np.array([[[[0, 0.5], [np.nan, 0]]]]))
    assert model.check(np.zeros((1, 2, 2))).shape == (1, 1, 2, 2)  # one image without its batch axis


@pytest.mark.parametrize("shape", [(1, 1, 27, 28), (2, 3, 28, 28), (1, 28, 28, 1), (5, 784), (28, 28)])
def test_a_wrong_shape_is_named_without_echoing_the_input(served, shape):
    _, url = served
    status, text = _post(url, {"inputs": np.full(shape, 0.5, dtype=np.float32).tolist()})
    answer = json.loads(text)
    assert status == 400 and f"got shape {list(shape)}" in answer["message"], text[:500]
    assert "[N, 1, 28, 28]" in answer["message"] and len(text) < 400


def test_the_registered_version_documents_its_input_and_classes(served):
    root, _ = served
    store = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(store)
    version = client.get_model_version_by_alias(SMALL_RUN, "champion")
    assert "[N, 1, 28, 28]" in version.description
    assert "[N, C, H, W]" in client.get_registered_model(SMALL_RUN).description

    # the MLmodel file where this store keeps it, whatever tracking URI the test process was left with
    location = client.get_logged_model(version.source.removeprefix("models:/")).artifact_location
    model = mlflow.models.Model.load(Path(location.removeprefix("file://")) / "MLmodel")
    assert model.metadata["classes"] == CLASSES
    assert model.metadata["input"] == {"shape": [-1, 1, 28, 28], "dtype": "float32", "range": [0, 1], "layout": "NCHW"}
    assert model.signature.inputs is None  # checked by the model itself: MLflow's check repeats the input
    assert [column.name for column in model.signature.outputs.inputs] == ["class", "probability", *CLASSES]


def test_the_served_model_needs_no_cnnpipe_code(served):
    """The model's code is the logged file itself: a process where cnnpipe cannot be imported serves it."""
    root, _ = served
    script = (
        "import sys; sys.modules['cnnpipe'] = None\n"  # any `import cnnpipe...` now fails
        "import mlflow.pyfunc, numpy as np\n"
        f"model = mlflow.pyfunc.load_model('models:/{SMALL_RUN}@champion')\n"
        "print(model.predict(np.zeros((2, 1, 28, 28), np.float32))['class'].tolist())\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db"}
    result = subprocess.run([sys.executable, "-c", script], cwd="/", env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert all(name in CLASSES for name in eval(result.stdout.strip().splitlines()[-1]))  # noqa: S307
