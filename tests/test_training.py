"""The train and evaluate stages for real: pulled Fashion-MNIST, a Lightning trainer, a SQLite MLflow store."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import run_cnnpipe, small_run_params, write_params


def mlflow_runs(root):
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    return client, client.search_runs([client.get_experiment_by_name("cnnpipe").experiment_id])


def test_train_then_evaluate_log_into_one_run(workdir):
    result = run_cnnpipe("train", cwd=workdir)
    assert "[32, 7, 7]" in result.stdout  # the shape table is printed before training
    train_metrics = json.loads((workdir / "metrics/train.json").read_text())
    assert train_metrics["epochs"] == 2 and train_metrics["images_per_sec"] > 0
    history = (workdir / "metrics/train_history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,") and len(history) == 3
    run_cnnpipe("evaluate", cwd=workdir)
    test_metrics = json.loads((workdir / "metrics/test.json").read_text())
    assert test_metrics["accuracy"] > 0.8 and test_metrics["count"] == 3000
    assert set(test_metrics["per_class"]) == {"Trouser", "Bag", "Sneaker"}
    for plot in ("confusion_matrix.png", "misclassified.png", "predictions.csv"):
        assert (workdir / "plots" / plot).stat().st_size > 0

    client, runs = mlflow_runs(workdir)
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["train.lr"] == "0.003" and run.data.params["model.layers.0.type"] == "conv"
    assert run.data.metrics["test/accuracy"] == pytest.approx(test_metrics["accuracy"])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")] == [0, 1]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {
        "checkpoints",
        "evaluation",
        "params.yaml",
        "preview.png",
        "model_summary.txt",
        "receptive_field.json",
        "receptive_field.txt",
        "training_curves.png",
        "receptive_field_growth.png",
        "effective_receptive_field.png",
        "first_layer_kernels.png",
        "feature_maps.png",
    } <= artifacts
    assert run.data.metrics["rf_final"] == 8  # conv2 after one 2x2 max-pool: 3 + 1 + 2 * 2
    assert 0 < run.data.metrics["erf_fraction"] <= 1
    assert "never sees the whole image" in run.data.tags["receptive_field.warning"]
    checkpoints = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    assert checkpoints == {"checkpoints/best.ckpt", "checkpoints/last.ckpt"}
    assert "cnnpipe.unlogged" not in run.data.tags
    (version,) = client.search_model_versions("name='cnnpipe'")
    assert version.run_id == run.info.run_id


def test_registered_model_answers_mlflow_models_predict(workdir):
    run_cnnpipe("train", cwd=workdir)
    test_images = np.load(workdir / "data/pulled/test_images.npy")[:4]
    test_labels = np.load(workdir / "data/pulled/test_labels.npy")[:4]
    batch = test_images.transpose(0, 3, 1, 2).astype(np.float32) / 255  # [N, C, H, W] in [0, 1]
    (workdir / "input.json").write_text(json.dumps({"inputs": batch.tolist()}))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir}/mlflow.db"}
    mlflow_cli = [str(Path(sys.executable).with_name("mlflow")), "models", "predict", "--env-manager", "local"]
    subprocess.run(
        [*mlflow_cli, "-m", "models:/cnnpipe/latest", "-i", "input.json", "-t", "json", "-o", "out.json"],
        cwd=workdir,
        env=env,
        check=True,
        capture_output=True,
    )
    probabilities = np.array(json.loads((workdir / "out.json").read_text())["predictions"])
    assert probabilities.shape == (4, 3)  # one probability per class: Trouser, Bag, Sneaker
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    assert (probabilities.argmax(axis=1) == test_labels).mean() >= 0.75


def test_an_interrupted_training_resumes_into_the_same_run(workdir, raw_params):
    write_params(workdir / "params.yaml", small_run_params(raw_params, workdir, epochs=4, limit_train_batches=40))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "cnnpipe", "train"],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = workdir / "data/checkpoints/last.ckpt"
    deadline = time.monotonic() + 120
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # a crash or preemption: no chance to clean up
    process.wait()
    assert last.exists()
    state = json.loads((workdir / "data/checkpoints/state.json").read_text())
    assert not state["completed"]

    result = run_cnnpipe("train", cwd=workdir)
    assert "Resuming from" in result.stdout
    client, runs = mlflow_runs(workdir)
    assert [run.info.run_id for run in runs] == [state["run_id"]]
    steps = {m.step for m in client.get_metric_history(state["run_id"], "val/acc")}
    assert steps == {0, 1, 2, 3}
    rows = (workdir / "metrics/train_history.csv").read_text().splitlines()[1:]
    assert [row.split(",")[0] for row in rows] == ["0", "1", "2", "3"]

    run_cnnpipe("train", cwd=workdir)  # a finished training is not resumed: a new run starts
    assert len(mlflow_runs(workdir)[1]) == 2


def test_impossible_network_stops_before_training_with_exit_code_2(workdir, raw_params):
    raw = small_run_params(raw_params, workdir)
    raw["model"]["layers"].insert(4, {"type": "maxpool", "kernel": 16})
    write_params(workdir / "params.yaml", raw)
    result = run_cnnpipe("train", cwd=workdir, check=False)
    assert result.returncode == 2
    assert "layer 'maxpool2'" in result.stderr and "empty output" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (workdir / "mlflow.db").exists()  # nothing was started
