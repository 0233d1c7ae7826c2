"""pipelines/slurm/train.sbatch on a real two-node Slurm cluster (tests/cluster.py): DDP across nodes n1 and n2
(CPU, gloo), a launch that does not match params.yaml, a rank killed on one node, a preemption that requeues.

The jobs ask for what the local nodes have, overriding the script's GPU header: `--gpus-per-node=0
--cpus-per-task=1`, 2 nodes x 1 task, and params.yaml says `num_nodes: 2`, `devices: 1`, `strategy: ddp`.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.cluster import SLURM_PACKAGES, SlurmCluster, why_not_installed
from tests.helpers import dvc_repo, sh, small_run_params, stage_runs

pytestmark = [pytest.mark.e2e, pytest.mark.cluster, pytest.mark.xdist_group("cluster")]
CPU_JOB = ("--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=1")
TWO_NODES = ("--nodes=2", *CPU_JOB)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if reason := why_not_installed(SLURM_PACKAGES, "/usr/sbin/slurmctld"):
        pytest.skip(reason)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        yield cluster.up()
    finally:
        cluster.down()


def two_node_repo(root: Path, raw_params, **train) -> Path:
    repo = dvc_repo(root, small_run_params(raw_params, root, num_nodes=2, devices=1, strategy="ddp", **train))
    (repo / "logs").mkdir()  # SLURM does not create the log's folder
    return repo


def job_log(repo: Path, job_id: str) -> str:
    return (repo / f"logs/cnnpipe-train-{job_id}.out").read_text()


def epochs_logged(client: MlflowClient, run_id: str) -> list[int]:
    """The steps of every epoch's metric, in the order logged: a lost or repeated epoch shows here."""
    steps = [[m.step for m in client.get_metric_history(run_id, key)] for key in ("val/acc", "epoch_time")]
    assert steps[0] == steps[1], steps
    return sorted(steps[0])


def wait_for_epoch(repo: Path, job_id: str, cluster: SlurmCluster, timeout: float = 240) -> None:
    """Until epoch 0 is in the live history and in last.ckpt (saved after the row): both ranks are training."""
    last, history = repo / "data/checkpoints/last.ckpt", repo / "data/checkpoints/train_history.csv"
    deadline = time.monotonic() + timeout
    while not (last.exists() and len(history.read_text().splitlines()) > 1):
        state = cluster.job(job_id)["JobState"]
        assert state in ("PENDING", "RUNNING") and time.monotonic() < deadline, (state, job_log(repo, job_id)[-3000:])
        time.sleep(0.2)
    time.sleep(0.3)  # last.ckpt is written in place: let it be whole


def task_pid(job_id: str, rank: int) -> int:
    """The `cnnpipe train` process of one SLURM task (SLURM_PROCID) of the job, found by its environment."""
    wanted = {f"SLURM_JOB_ID={job_id}".encode(), f"SLURM_PROCID={rank}".encode()}
    for folder in Path("/proc").iterdir():
        try:
            command = (folder / "cmdline").read_bytes().split(b"\0")
            environ = set((folder / "environ").read_bytes().split(b"\0"))
        except OSError:
            continue
        if b"train" in command and any(part.endswith(b"cnnpipe") for part in command) and wanted <= environ:
            return int(folder.name)
    raise AssertionError(f"no cnnpipe train task {rank} of job {job_id}")


def test_sbatch_across_two_nodes_a_killed_task_ends_the_job_and_the_resubmitted_job_finishes(
    cluster, tmp_path, raw_params
):
    """The launcher end to end, with a fault in the middle: a launch that does not match params.yaml stops at once;
    a rank killed on n2 ends the whole job; resubmitted, the job resumes, trains across both nodes, commits and
    evaluates. DVC prepared the data once, in the first job's batch script."""
    repo = two_node_repo(tmp_path, raw_params, epochs=2, limit_train_batches=30)
    mismatch = cluster.sbatch("--nodes=1", *CPU_JOB, cwd=repo)  # params.yaml says 2 nodes
    failed = cluster.wait(mismatch, timeout=60)
    assert (failed["JobState"], failed["ExitCode"]) == ("FAILED", "2:0")
    header, error = job_log(repo, mismatch).strip().splitlines()  # the job's header line and one error line
    assert header.startswith(f"job {mismatch} (restart 0): 1 nodes x 1 tasks")
    assert error == (
        "params.yaml: train.num_nodes is 2 and train.devices 1, but the job has 1 nodes x 1 tasks; "
        "set train.num_nodes: 1 and train.devices: 1"
    )
    assert not (repo / "data").exists()  # stopped before anything ran

    first = cluster.sbatch(*TWO_NODES, cwd=repo)
    wait_for_epoch(repo, first, cluster)
    os.kill(task_pid(first, rank=1), signal.SIGKILL)  # the task on n2
    killed = time.monotonic()
    job = cluster.wait(first, timeout=60)
    assert time.monotonic() - killed < 60
    assert job["JobState"] == "FAILED" and job["ExitCode"] != "0:0", job
    client, (run,) = stage_runs(repo)  # FAILED, or RUNNING when SLURM had to SIGKILL rank 0: resubmitting ends it

    again = cluster.sbatch(*TWO_NODES, cwd=repo)
    job = cluster.wait(again, timeout=300)
    log = job_log(repo, again)
    assert (job["JobState"], job["ExitCode"], job["NodeList"]) == ("COMPLETED", "0:0", "n[1-2]"), log[-3000:]
    assert re.search(rf"Resuming from data/checkpoints/last\.ckpt into\s+MLflow\s+run\s+{run.info.run_id}", log), log
    both = job_log(repo, first) + log  # DVC ran once per job, in the batch script; pull and augment only once
    assert [both.count(f"Running stage '{stage}'") for stage in ("pull", "augment", "evaluate")] == [1, 1, 1]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in log and log.count("Layer shapes, input") == 1  # one console
    for node in ("n1", "n2"):  # each slurmd started one task of the training step
        assert f"StepId={again}.0" in (cluster.root / f"log/slurmd-{node}.log").read_text()

    client, (run,) = stage_runs(repo)  # still the one run
    assert run.info.status == "FINISHED" and "x 2 node(s), DDPStrategy" in run.data.tags["cnnpipe.trainer"]
    assert epochs_logged(client, run.info.run_id) == [0, 1]
    assert len((repo / "metrics/train_history.csv").read_text().splitlines()) == 3  # a header, a row per epoch
    _, evaluated = stage_runs(repo, "evaluate")
    assert [e.data.tags["mlflow.parentRunId"] for e in evaluated] == [run.info.run_id]
    assert "up to date" in sh("dvc", "status", cwd=repo).stdout  # the script committed train's outputs


def test_preemption_saves_requeues_and_resumes_into_the_same_run(cluster, tmp_path, raw_params):
    """SIGUSR1 is what `--signal=USR1@120` sends 120 s before the time limit. Slurm sends it only at its 30 s
    checks, up to a minute early, so the test sends it itself (`scancel --signal`) once training runs."""
    repo = two_node_repo(tmp_path, raw_params, epochs=3, limit_train_batches=30)
    job_id = cluster.sbatch(*TWO_NODES, cwd=repo)  # the script's own --requeue and --signal
    wait_for_epoch(repo, job_id, cluster)
    cluster.run("scancel", "--signal=USR1", job_id)
    job = cluster.wait(job_id, timeout=300)
    log = job_log(repo, job_id)
    assert (job["JobState"], job["Restarts"]) == ("COMPLETED", "1"), log[-3000:]

    client, (run,) = stage_runs(repo)
    saved = re.search(r"saved (data/checkpoints/preempted-\w+/hpc_ckpt_0\.ckpt); the requeued job resumes", log)
    assert saved, log[-3000:]
    assert re.search(rf"Resuming from {saved[1]} into\s+MLflow\s+run\s+{run.info.run_id}", log), log[-3000:]
    assert f"job {job_id} (restart 1)" in log and log.count("Running stage 'augment'") == 1  # requeued: no-op
    assert run.info.status == "FINISHED" and epochs_logged(client, run.info.run_id) == [0, 1, 2]
    assert len((repo / "metrics/train_history.csv").read_text().splitlines()) == 4
    assert not list((repo / "data/checkpoints").glob("preempted-*/hpc_ckpt_*"))  # finished: never resumed again
    assert "up to date" in sh("dvc", "status", cwd=repo).stdout
