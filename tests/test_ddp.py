"""DDP on CPU (gloo) for real: two processes via `dvc repro`, two nodes via the torchrun launcher, a crash.

The GPU path is the same code with `accelerator: gpu` and NCCL; CI has no GPU.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from cnnpipe.analysis.predictions import predict
from cnnpipe.data.store import load_store
from cnnpipe.models.module import load_model
from tests.helpers import BIN, SMALL_RUN, dvc_repo, run_cnnpipe, sh, small_run_params, write_params
from tests.mlflow_server import free_port

pytestmark = pytest.mark.e2e
# Same data, same global batch (64) and the same number of images per epoch in both runs. fp32, because the test
# recounts validation in fp32: under bf16 a near-tie image can flip (CI saw one of 1,803 on a bf16 CPU).
COMPARED = {"epochs": 2, "limit_train_batches": 20, "limit_val_batches": 1.0, "precision": "32-true"}
# Validation accuracy over all 1,803 images; the runs differ in batch-norm batches and data order.
TOLERANCE = 0.03
ODD_VALIDATION = 0.1001  # 601 of each class's 6,000 images: 1,803 in all, so the two ranks' shards differ in size


def one_run(root: Path):
    """The one training run, however many processes trained, and the test metrics of its one evaluation."""
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    training, evaluation = sorted(
        client.search_runs([client.get_experiment_by_name(SMALL_RUN).experiment_id]),
        key=lambda run: run.data.tags["cnnpipe.stage"] != "train",
    )
    assert evaluation.data.tags["mlflow.parentRunId"] == training.info.run_id
    return client, training, evaluation.data.metrics


def test_dvc_repro_with_two_processes_logs_one_run_and_matches_one_process(tmp_path, raw_params):
    ddp_root, single_root = tmp_path / "ddp", tmp_path / "single"
    ddp_root.mkdir(), single_root.mkdir()
    raw_params["data"]["val_fraction"] = ODD_VALIDATION
    ddp = small_run_params(raw_params, ddp_root, devices=2, strategy="ddp", batch_size=32, **COMPARED)
    dvc_repo(ddp_root, ddp)
    sh("dvc", "repro", cwd=ddp_root)

    client, run, tested = one_run(ddp_root)
    assert run.data.params["train.devices"] == "2" and "test/acc" in tested
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")] == [0, 1]
    history = (ddp_root / "metrics/train_history.csv").read_text().splitlines()
    assert len(history) == 3  # one header, one row per epoch: written once, by rank 0
    checkpoints = sorted(p.name for p in (ddp_root / "data/checkpoints").iterdir())
    assert checkpoints == ["best.ckpt", "last.ckpt", "state.json", "train_history.csv"]

    write_params(single_root / "params.yaml", small_run_params(raw_params, single_root, batch_size=64, **COMPARED))
    for data in ("data/pulled", "data/augmented"):  # the very same data
        shutil.copytree(ddp_root / data, single_root / data)
    run_cnnpipe("train", cwd=single_root)
    outputs = [
        sorted(str(p.relative_to(root)) for p in (root / "data/train").rglob("*")) for root in (ddp_root, single_root)
    ]
    assert outputs[0] == outputs[1]  # the stage writes the same files however many processes trained
    ddp_accuracy = json.loads((ddp_root / "metrics/train.json").read_text())["best/val/acc"]
    single_accuracy = json.loads((single_root / "metrics/train.json").read_text())["best/val/acc"]
    assert abs(ddp_accuracy - single_accuracy) <= TOLERANCE, (ddp_accuracy, single_accuracy)

    _, splits = load_store(ddp_root / "data/pulled")
    val = splits["val"]
    assert len(val.labels) == 1803
    recounted = predict(load_model(ddp_root / "data/train/model.ckpt"), val.images, val.labels, batch_size=256)
    exact = float(np.mean(recounted.predicted == recounted.labels))
    assert abs(ddp_accuracy - exact) < 0.5 / 1803, (ddp_accuracy, exact)  # every image counted once, none twice


def test_two_nodes_simulated_with_the_torchrun_launcher_on_localhost(tmp_path, raw_params):
    repo = dvc_repo(tmp_path, small_run_params(raw_params, tmp_path, num_nodes=2, devices=1, strategy="ddp"))
    launch = {"NNODES": "2", "NPROC_PER_NODE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    nodes = [
        subprocess.Popen(
            ["pipelines/torchrun/train.sh"],
            cwd=repo,
            env={**os.environ, **launch, "NODE_RANK": str(rank), "VENV": str(Path(BIN).parent)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=400)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    shape_tables = [output.count("Layer shapes, input") for output in outputs]
    assert shape_tables == [1, 0], shape_tables  # one console: only global rank 0 speaks
    client, run, tested = one_run(repo)
    assert run.data.params["train.num_nodes"] == "2" and "test/acc" in tested  # node 0 evaluated
    assert len((repo / "metrics/train_history.csv").read_text().splitlines()) == 3
    status = sh("dvc", "status", cwd=repo).stdout  # the launcher recorded train's outputs in dvc.lock
    assert "up to date" in status, status


def rank_of(pid: int) -> str | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    return next((item.split(b"=", 1)[1].decode() for item in environ if item.startswith(b"LOCAL_RANK=")), None)


def test_a_crashed_rank_ends_the_whole_job_within_60_seconds(workdir, raw_params):
    params = small_run_params(raw_params, workdir, devices=2, strategy="ddp", epochs=50, limit_train_batches=40)
    write_params(workdir / "params.yaml", params)
    job = subprocess.Popen(
        [sys.executable, "-m", "cnnpipe", "train"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        history = workdir / "data/checkpoints/train_history.csv"  # written live, every epoch
        deadline = time.monotonic() + 180
        while not history.exists():  # rank 0 wrote epoch 0: both ranks are deep in training
            assert job.poll() is None and time.monotonic() < deadline, job.stderr.read()[-3000:]
            time.sleep(0.2)
        children = subprocess.run(["pgrep", "-P", str(job.pid)], capture_output=True, text=True).stdout.split()
        (rank_1,) = [int(pid) for pid in children if rank_of(int(pid)) == "1"]
        os.kill(rank_1, signal.SIGKILL)
        killed = time.monotonic()
        job.wait(timeout=60)
        assert job.returncode != 0
        assert time.monotonic() - killed < 60
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
