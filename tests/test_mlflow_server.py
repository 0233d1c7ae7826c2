"""Remote tracking against a real `mlflow server`: what its REST API shows, and a server that goes away."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.helpers import run_cnnpipe, small_run_params, write_params
from tests.mlflow_server import MlflowServer, free_port


@pytest.fixture
def server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"), free_port()).start()
    yield server
    server.stop()


def prepared_repo(root, raw_params, server, data, **train):
    """A git repository with params.yaml pointing at the server, and the data pulled and augmented."""
    raw = small_run_params(raw_params, root, **train)
    raw["mlflow"].update(tracking_uri=server.url, experiment="remote")
    write_params(root / "params.yaml", raw)
    for command in (["init", "-q"], ["add", "params.yaml"], ["commit", "-qm", "params"]):
        subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *command], cwd=root, check=True)
    shutil.copytree(data, root / "data")
    return root


def only_run(server, stage="train"):
    """The one run of a stage: the training's, or its evaluation's."""
    experiment = server.api("experiments/get-by-name?experiment_name=remote")["experiment"]
    query = {"experiment_ids": [experiment["experiment_id"]], "filter": f"tags.`cnnpipe.stage` = '{stage}'"}
    runs = server.api("runs/search", query)["runs"]
    assert len(runs) == 1, [run["info"]["run_name"] for run in runs]
    return runs[0]


def test_rest_api_shows_one_run_with_params_metrics_tags_and_artifacts(tmp_path, raw_params, server, prepared_data):
    repo = prepared_repo(tmp_path, raw_params, server, prepared_data)
    run_cnnpipe("train", cwd=repo)
    run_cnnpipe("evaluate", cwd=repo)

    run = only_run(server)
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["train.lr"] == "0.003" and params["mlflow.experiment"] == "remote"
    metrics = {m["key"] for m in run["data"]["metrics"]}
    epoch_metrics = {"train/loss", "train/acc", "val/loss", "val/acc", "lr", "epoch_time", "images_per_sec"}
    assert epoch_metrics | {"best/val/acc", "parameters", "rf_final"} <= metrics
    evaluated = only_run(server, "evaluate")
    assert {"test/acc", "test/loss", "test/acc/Bag"} <= {m["key"] for m in evaluated["data"]["metrics"]}
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    assert tags["mlflow.source.git.commit"] == commit and tags["git.dirty"] == "false"
    assert {"host", "cnnpipe.version"} <= set(tags)
    run_id = run["info"]["run_id"]
    history = server.api(f"metrics/get-history?run_id={run_id}&metric_key=val/acc")["metrics"]
    assert sorted(m["step"] for m in history) == [0, 1]

    listed = server.api(f"artifacts/list?run_id={run_id}")["files"]
    names = {f["path"] for f in listed}
    assert {"checkpoints", "params.yaml", "preview.png", "training_curves.png"} <= names
    assert {"receptive_field.json", "first_layer_kernels.png", "feature_maps.png", "model_summary.txt"} <= names
    evaluated_id = evaluated["info"]["run_id"]
    evaluation = {f["path"] for f in server.api(f"artifacts/list?run_id={evaluated_id}&path=evaluation")["files"]}
    assert evaluation == {"evaluation/confusion_matrix.png", "evaluation/misclassified.png"}
    images = {f["path"].split("+")[0] for f in server.api(f"artifacts/list?run_id={run_id}&path=images")["files"]}
    assert {"images/training_curves", "images/preview"} <= images  # the UI's image grid
    evaluated_images = server.api(f"artifacts/list?run_id={evaluated_id}&path=images")["files"]
    assert "images/confusion_matrix" in {f["path"].split("+")[0] for f in evaluated_images}
    registered = server.api("registered-models/search")
    assert registered.get("registered_models", []) == []  # a smoke run (6 batches) is not registered


def test_unreachable_server_stops_training_before_it_starts(tmp_path, raw_params):
    raw = small_run_params(raw_params, tmp_path)
    url = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    raw["mlflow"]["tracking_uri"] = url
    write_params(tmp_path / "params.yaml", raw)
    result = run_cnnpipe("train", cwd=tmp_path, check=False)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"cnnpipe: error: mlflow.tracking_uri: no MLflow tracking server answers at {url}")
    assert "Connection refused" in line and line.endswith("or use sqlite:///mlflow.db for a local store")
    assert not (tmp_path / "data").exists()  # nothing trained, nothing written


def test_server_gone_during_training_keeps_checkpoints_and_the_run_learns_what_is_missing(
    tmp_path, raw_params, server, prepared_data
):
    repo = prepared_repo(tmp_path, raw_params, server, prepared_data, epochs=4, limit_train_batches=30)
    training = subprocess.Popen(
        [sys.executable, "-m", "cnnpipe", "train"],
        cwd=repo,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    history = repo / "data/checkpoints/train_history.csv"  # written live, every epoch
    deadline = time.monotonic() + 120
    while not (history.exists() and len(history.read_text().splitlines()) >= 2):  # header + epoch 0
        assert training.poll() is None and time.monotonic() < deadline, "training ended before its first epoch"
        time.sleep(0.1)
    server.stop()
    _, stderr = training.communicate(timeout=300)
    assert training.returncode == 0, stderr[-2000:]
    assert "warning: MLflow: could not log" in stderr
    assert {"best.ckpt", "last.ckpt"} <= {p.name for p in (repo / "data/checkpoints").iterdir()}
    assert len((repo / "metrics/train_history.csv").read_text().splitlines()) == 5  # all four epochs
    unlogged = json.loads((repo / "data/train/run.json").read_text())["unlogged"]
    assert "metrics of step 3" in unlogged and "artifact checkpoints/best.ckpt" in unlogged

    server.start()  # back again: evaluate logs into the same run and tags what train could not log
    run_cnnpipe("evaluate", cwd=repo)
    tags = {t["key"]: t["value"] for t in only_run(server)["data"]["tags"]}
    assert "metrics of step 3" in tags["cnnpipe.unlogged"]
