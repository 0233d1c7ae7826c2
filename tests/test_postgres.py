"""The README's team tracking server for real: `mlflow server` on PostgreSQL 15 with the artifact proxy
(`--artifacts-destination`), started by tests/cluster.py. A DDP training and two queued DVC experiments log into it
at once; a restart of the server during a training loses nothing; `cnnpipe compare` and the alias `champion`
work against it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.cluster import POSTGRES_BIN, POSTGRES_PACKAGES, PostgresServer, why_not_installed
from tests.helpers import BIN, dvc_repo, run_cnnpipe, sh, small_run_params, write_params
from tests.mlflow_server import MlflowServer, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.cluster, pytest.mark.xdist_group("cluster")]
EXPERIMENT = "team"
MODEL = "team-cnn"


@pytest.fixture(scope="module")
def team_server(tmp_path_factory):
    if reason := why_not_installed(POSTGRES_PACKAGES, str(POSTGRES_BIN / "postgres")):
        pytest.skip(reason)
    postgres = PostgresServer()
    server = MlflowServer(tmp_path_factory.mktemp("team-server"), free_port(), backend=postgres.uri)
    try:
        postgres.up()
        yield server.start()
    finally:
        server.stop()
        postgres.down()


def team_repo(root: Path, raw_params, server: MlflowServer, **train) -> Path:
    """A repository whose params.yaml logs to the team server and registers every training."""
    root.mkdir()
    raw = small_run_params(raw_params, root, **train)
    repo = dvc_repo(root, raw)
    raw["mlflow"].update(tracking_uri=server.url, experiment=EXPERIMENT, registered_model=MODEL)
    raw["mlflow"]["register_model"] = "always"  # smoke trainings too: the champion is chosen among them
    write_params(repo / "params.yaml", raw)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "the team server", cwd=repo)
    return repo


@pytest.fixture
def start():
    """Starts a command in a process group of its own, which the test can pause; killed if the test fails."""
    started = []

    def start(*command: str, cwd: Path) -> subprocess.Popen:
        env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
        started.append(
            subprocess.Popen(
                command,
                cwd=cwd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )  # fmt: skip
        )
        return started[-1]

    yield start
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_for_queue(repo: Path, timeout: float = 400) -> str:
    deadline = time.monotonic() + timeout
    while any(state in (status := sh("dvc", "queue", "status", cwd=repo).stdout) for state in ("Queued", "Running")):
        assert time.monotonic() < deadline, status
        time.sleep(2)
    return status


def wait_until(condition, training: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert training.poll() is None and time.monotonic() < deadline, training.stdout.read()[-3000:]
        time.sleep(0.5)


def overlap(run, other) -> bool:
    return run.info.start_time < other.info.end_time and other.info.start_time < run.info.end_time


def trainings(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs([experiment.experiment_id], "tags.`cnnpipe.stage` = 'train'") if experiment else []


def test_ddp_and_queued_experiments_log_at_once_and_a_restart_loses_nothing(tmp_path, raw_params, team_server, start):
    repo = team_repo(tmp_path / "repo", raw_params, team_server, devices=2, strategy="ddp")
    sh("dvc", "repro", "augment", cwd=repo)  # the queued experiments restore pull and augment from DVC's run cache
    for name, lr in (("lr-low", "0.001"), ("lr-high", "0.01")):
        one_process = ("-S", "train.devices=1", "-S", "train.strategy=auto")
        sh("dvc", "exp", "run", "--queue", "-n", name, "-S", f"train.lr={lr}", *one_process, cwd=repo)
    client = MlflowClient(team_server.url)
    training = start("dvc", "repro", cwd=repo)  # the DDP training, in the workspace
    wait_until(lambda: len(trainings(client)) == 1, training)
    # Held while the queued experiments start (seconds to a minute here), as a longer training would be: then
    # all three runs are open at once, and go on logging together.
    os.killpg(training.pid, signal.SIGSTOP)
    try:
        sh("dvc", "queue", "start", "-j", "2", cwd=repo)
        wait_until(lambda: len(trainings(client)) == 3, training)
    finally:
        os.killpg(training.pid, signal.SIGCONT)
    output, _ = training.communicate(timeout=400)
    assert training.returncode == 0, output[-3000:]
    status = wait_for_queue(repo)
    assert status.count("Success") == 2, status

    runs = trainings(client)
    times = {run.info.run_name: (run.info.start_time, run.info.end_time) for run in runs}
    ddp, *queued = sorted(runs, key=lambda run: run.data.params["train.devices"], reverse=True)
    assert all(overlap(*pair) for pair in ((ddp, queued[0]), (ddp, queued[1]), queued)), times  # all open at once
    assert sorted(run.info.run_name for run in runs if run.info.run_name.startswith("lr-")) == ["lr-high", "lr-low"]
    assert len(runs) == 3 and {run.info.status for run in runs} == {"FINISHED"}
    assert sorted(run.data.params["train.devices"] for run in runs) == ["1", "1", "2"]
    artifacts = {f.path for f in client.list_artifacts(runs[0].info.run_id, "checkpoints")}
    assert artifacts == {"checkpoints/best.ckpt", "checkpoints/last.ckpt"}  # uploaded through the server's proxy
    assert list((team_server.root / "artifacts").rglob("best.ckpt"))

    # The server restarts during a training: the training goes on, and nothing it made is lost.
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["train"].update(epochs=4, limit_train_batches=60, lr=0.002)
    write_params(repo / "params.yaml", raw)
    training = start("dvc", "repro", cwd=repo)
    history = repo / "data/checkpoints/train_history.csv"
    rows = lambda: len(history.read_text().splitlines())  # noqa: E731
    new = lambda: [r.info.run_id for r in trainings(client) if r.data.params.get("train.lr") == "0.002"]  # noqa: E731
    wait_until(new, training)  # the run is created before its params are logged: wait for them
    (run_id,) = new()
    wait_until(lambda: all(client.get_metric_history(run_id, key) for key in ("val/acc", "epoch_time")), training)
    team_server.stop()  # once epoch 0 is logged
    down_at = rows()
    while rows() == down_at:  # an epoch ends while the server is down
        assert training.poll() is None, training.stdout.read()[-3000:]
        time.sleep(0.05)
    os.killpg(training.pid, signal.SIGSTOP)  # paused while the server starts (~15 s), so that it is back mid-training
    try:
        team_server.start()
    finally:
        os.killpg(training.pid, signal.SIGCONT)
    output, _ = training.communicate(timeout=400)
    assert training.returncode == 0, output[-3000:]
    assert "warning: MLflow: could not log" in output
    assert len((repo / "metrics/train_history.csv").read_text().splitlines()) == 5  # every epoch, all four
    unlogged = json.loads((repo / "data/train/run.json").read_text())["unlogged"]
    assert f"metrics of step {down_at - 1}" in unlogged  # the epoch that ended while the server was down
    restarted = client.get_run(run_id)
    assert restarted.info.status == "FINISHED"
    assert all(item in restarted.data.tags["cnnpipe.unlogged"] for item in unlogged)
    logged = {m.step for m in client.get_metric_history(run_id, "val/acc")}
    assert all(step in logged or f"metrics of step {step}" in unlogged for step in range(4))  # each epoch: one
    assert 3 in logged  # logging came back after the restart
    assert {"checkpoints/best.ckpt", "checkpoints/last.ckpt"} <= {
        f.path for f in client.list_artifacts(run_id, "checkpoints")
    }
    evaluations = client.search_runs([restarted.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'")
    assert len(evaluations) == 1 and "test/acc" in evaluations[0].data.metrics

    table = run_cnnpipe("compare", "--tracking-uri", team_server.url, "--experiment", EXPERIMENT, "--format", "csv",
                        cwd=tmp_path).stdout  # fmt: skip
    assert len(table.strip().splitlines()) == 1 + 4 and "lr-low" in table and "lr-high" in table
    versions = client.search_model_versions(f"name = '{MODEL}'")
    assert len(versions) == 4
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert float(champion.tags["test.acc"]) == max(float(v.tags["test.acc"]) for v in versions)
