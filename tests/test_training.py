"""The train and evaluate stages for real: pulled Fashion-MNIST, a Lightning trainer, a SQLite MLflow store."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from cnnpipe.models.hardware import auto_precision
from cnnpipe.models.module import load_model
from cnnpipe.models.trainer import LIGHTNING_NOISE
from cnnpipe.tracking.compare_view import VIEW_NAME, VIEW_TAG
from cnnpipe.tracking.compare_view import state as compare_view_state
from cnnpipe.tracking.dataset import dvc_hash
from cnnpipe.tracking.evaluation_store import EVALUATION_RUN_TAG
from tests.helpers import SMALL_RUN, run_cnnpipe, small_run_params, stage_runs, write_params


def run_file_digest(root):
    """What dvc.lock would record for data/pulled, the first 36 characters MLflow keeps as a digest."""
    return dvc_hash(root / "data/pulled")[:36]


def test_train_then_evaluate_log_a_training_run_and_its_evaluation(workdir):
    result = run_cnnpipe("train", cwd=workdir)
    assert "[48, 7, 7]" in result.stdout  # the shape table is printed before training
    assert [noise for noise in LIGHTNING_NOISE if re.search(noise, result.stdout + result.stderr)] == []
    train_metrics = json.loads((workdir / "metrics/train.json").read_text())
    # only what `dvc metrics show` compares (it fits 120 columns); MLflow has the rest, checked below
    assert list(train_metrics) == ["best/val/acc", "best/val/loss", "best/epoch", "train_time_s"]
    history = (workdir / "metrics/train_history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,") and len(history) == 3
    run_file = json.loads((workdir / "data/train/run.json").read_text())
    assert run_file["tracking_uri"] == f"sqlite:///{workdir}/mlflow.db"  # as params.yaml says it
    assert run_file["model_version"] is None  # a smoke run (limit_train_batches: 6) is not registered
    run_cnnpipe("evaluate", cwd=workdir)
    test_metrics = json.loads((workdir / "metrics/test.json").read_text())
    assert test_metrics["test/acc"] > 0.8 and test_metrics["test/count"] == 3000
    assert list(test_metrics) == ["test/acc", "test/loss", "test/count"]  # each class's accuracy is a plot's
    with (workdir / "plots/per_class_accuracy.csv").open() as handle:
        per_class = {row["class"]: float(row["accuracy"]) for row in csv.DictReader(handle)}
    assert set(per_class) == {"Trouser", "Bag", "Sneaker"} and all(0 <= acc <= 1 for acc in per_class.values())
    for plot in ("confusion_matrix.png", "misclassified.png", "predictions.csv", "per_class_accuracy.csv"):
        assert (workdir / "plots" / plot).stat().st_size > 0

    client, (run,) = stage_runs(workdir)
    assert run.data.params["train.lr"] == "0.003" and run.data.params["model.layers.0.type"] == "conv"
    assert run.data.params["model.built_widths"] == "16,48,256,3"
    assert not any(key.startswith("evaluate.") for key in run.data.params)  # evaluate's params are its own run's
    assert run.data.metrics["best/val/acc"] == pytest.approx(train_metrics["best/val/acc"])
    assert run.data.metrics["epochs"] == 2 and run.data.metrics["parameters"] == 610_387
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")] == [0, 1]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "images_per_sec")] == [0, 1]
    assert run.data.metrics["forward_mflops"] == pytest.approx(4.14, abs=0.01)  # conv, dense layers, 3 classes
    assert run.data.metrics["mean/images_per_sec"] > 0
    assert run.data.metrics["mean/gflops_per_sec"] == pytest.approx(
        run.data.metrics["mean/images_per_sec"] * 3 * run.data.metrics["forward_mflops"] / 1e3, rel=1e-6
    )
    assert run.data.tags["mlflow.user"] and run.data.tags["mlflow.source.type"] == "PROJECT"
    # what `auto` resolved to on this machine: its precision, NHWC on a CPU, augmentation in the training process
    assert run.data.tags["cnnpipe.trainer"].endswith(
        f"precision {auto_precision('cpu')}, channels_last True, loader workers 0"
    )
    assert str(workdir) not in run.data.tags["mlflow.source.name"]  # no path of this machine
    contexts = {
        tag.value for data in run.inputs.dataset_inputs for tag in data.tags if tag.key == "mlflow.data.context"
    }
    assert contexts == {"train", "validation"}
    assert run.inputs.dataset_inputs[0].dataset.digest == run_file_digest(workdir)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {
        "checkpoints",
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
        "receptive_field_table.png",
    } <= artifacts
    assert run.data.metrics["rf_final"] == 8  # conv2 after one 2x2 max-pool: 3 + 1 + 2 * 2
    assert 0 < run.data.metrics["erf_fraction"] <= 1
    assert "never sees the whole image" in run.data.tags["receptive_field.warning"]
    checkpoints = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    assert checkpoints == {"checkpoints/best.ckpt", "checkpoints/last.ckpt"}
    assert "cnnpipe.unlogged" not in run.data.tags and run.info.status == "FINISHED"
    assert client.search_model_versions(f"name='{SMALL_RUN}'") == []

    _, (evaluation,) = stage_runs(workdir, "evaluate")
    assert evaluation.data.tags["mlflow.parentRunId"] == run.info.run_id
    assert evaluation.info.run_name == f"{run.info.run_name}-eval" and evaluation.info.status == "FINISHED"
    assert evaluation.data.params == {
        "evaluate.batch_size": "512",
        "evaluate.misclassified": "6",
        "evaluate.tta": "auto",
        "evaluate.tta_shift": "1",
    }
    assert evaluation.data.tags["evaluate.tta"] == "hflip"  # auto: params.yaml's augmentation mirrors the images
    assert evaluation.data.metrics["test/acc"] == pytest.approx(test_metrics["test/acc"])
    assert evaluation.data.metrics["test/acc/Bag"] == pytest.approx(per_class["Bag"])  # in MLflow as before
    assert "evaluation" in {a.path for a in client.list_artifacts(evaluation.info.run_id)}
    # the training run carries its test result, where MLflow's runs table and Compare page rank trainings
    trained = client.get_run(run.info.run_id)
    assert trained.data.metrics["test/acc"] == pytest.approx(test_metrics["test/acc"])
    assert trained.data.metrics["test/loss"] == pytest.approx(test_metrics["test/loss"])
    assert trained.data.tags[EVALUATION_RUN_TAG] == evaluation.info.run_id
    view = json.loads(client.get_experiment(run.info.experiment_id).tags[VIEW_TAG])
    assert view["name"] == VIEW_NAME and json.loads(view["state"]) == compare_view_state()


def test_an_evaluate_only_rerun_is_a_new_child_run_and_the_training_run_is_untouched(workdir, raw_params):
    run_cnnpipe("train", cwd=workdir)
    run_cnnpipe("evaluate", cwd=workdir)
    client, (training,) = stage_runs(workdir)
    raw = small_run_params(raw_params, workdir)
    raw["evaluate"]["misclassified"] = 9
    write_params(workdir / "params.yaml", raw)
    run_cnnpipe("evaluate", cwd=workdir)
    _, evaluations = stage_runs(workdir, "evaluate")
    assert sorted(run.data.params["evaluate.misclassified"] for run in evaluations) == ["6", "9"]
    after = client.get_run(training.info.run_id)
    assert after.info.end_time == training.info.end_time and after.data.params == training.data.params
    # only the test result moves on: one point per evaluation, the tag names the newest
    assert [m.step for m in client.get_metric_history(training.info.run_id, "test/acc")] == [0, 1]
    assert after.data.metrics == training.data.metrics | {
        "test/acc": client.get_metric_history(training.info.run_id, "test/acc")[1].value,
        "test/loss": client.get_metric_history(training.info.run_id, "test/loss")[1].value,
    }
    newest = max(evaluations, key=lambda run: run.info.start_time)
    assert after.data.tags[EVALUATION_RUN_TAG] == newest.info.run_id


def test_registered_model_answers_mlflow_models_predict_at_champion(workdir, raw_params):
    raw = small_run_params(raw_params, workdir)
    raw["mlflow"]["register_model"] = "always"
    write_params(workdir / "team.yaml", raw)  # another params file: the one read is the one logged
    run_cnnpipe("--params", "team.yaml", "train", cwd=workdir)
    run_cnnpipe("--params", "team.yaml", "evaluate", cwd=workdir)
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    version = client.get_model_version_by_alias(SMALL_RUN, "champion")
    artifacts = {artifact.path for artifact in client.list_artifacts(version.run_id)}
    assert "team.yaml" in artifacts and "params.yaml" not in artifacts
    assert str(version.version) == "1" and float(version.tags["test.acc"]) > 0.8
    assert version.tags["data.digest"].endswith(".dir") and "Trouser, Bag, Sneaker" in version.description
    assert "[N, C, H, W]" in client.get_registered_model(SMALL_RUN).description
    test_images = np.load(workdir / "data/pulled/test_images.npy")[:4]
    test_labels = np.load(workdir / "data/pulled/test_labels.npy")[:4]
    batch = test_images.transpose(0, 3, 1, 2).astype(np.float32) / 255  # [N, C, H, W] in [0, 1]
    (workdir / "input.json").write_text(json.dumps({"inputs": batch.tolist()}))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir}/mlflow.db"}
    mlflow_cli = [str(Path(sys.executable).with_name("mlflow")), "models", "predict", "--env-manager", "local"]
    subprocess.run(
        [*mlflow_cli, "-m", f"models:/{SMALL_RUN}@champion", "-i", "input.json", "-t", "json", "-o", "out.json"],
        cwd=workdir,
        env=env,
        check=True,
        capture_output=True,
    )
    rows = json.loads((workdir / "out.json").read_text())["predictions"]  # the class, then a column per class
    classes = ["Trouser", "Bag", "Sneaker"]
    probabilities = np.array([[row[name] for name in classes] for row in rows])
    assert probabilities.shape == (4, 3)
    assert [row["class"] for row in rows] == [classes[i] for i in probabilities.argmax(axis=1)]
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    assert (probabilities.argmax(axis=1) == test_labels).mean() >= 0.75
    with torch.no_grad():  # the served weights are model.ckpt's (the best epoch), not the last epoch's
        delivered = load_model(workdir / "data/train/model.ckpt")
        expected = delivered.probabilities(delivered(torch.from_numpy(batch))).numpy()
    assert np.allclose(probabilities, expected, atol=1e-5)


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
    client, runs = stage_runs(workdir)
    assert [run.info.run_id for run in runs] == [state["run_id"]]
    steps = {m.step for m in client.get_metric_history(state["run_id"], "val/acc")}
    assert steps == {0, 1, 2, 3}
    rows = (workdir / "metrics/train_history.csv").read_text().splitlines()[1:]
    assert [row.split(",")[0] for row in rows] == ["0", "1", "2", "3"]

    run_cnnpipe("train", cwd=workdir)  # a finished training is not resumed: a new run starts
    assert len(stage_runs(workdir)[1]) == 2


def test_impossible_network_stops_before_training_with_exit_code_2(workdir, raw_params):
    raw = small_run_params(raw_params, workdir)
    raw["model"]["layers"].insert(4, {"type": "maxpool", "kernel": 16})
    write_params(workdir / "params.yaml", raw)
    result = run_cnnpipe("train", cwd=workdir, check=False)
    assert result.returncode == 2
    assert "layer 'maxpool2'" in result.stderr and "empty output" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (workdir / "mlflow.db").exists()  # nothing was started
