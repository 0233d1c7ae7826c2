"""`dvc repro` end to end in a temporary git repository, with real DVC, real data and a real MLflow store."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import REPO, small_run_params, write_params

pytestmark = pytest.mark.e2e
BIN = str(Path(sys.executable).parent)


def sh(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env)
    assert result.returncode == 0, f"{args}: {result.stdout[-3000:]}{result.stderr[-3000:]}"
    return result


@pytest.fixture
def repo(tmp_path, raw_params):
    """A fresh clone's worth of the project: dvc.yaml, params.yaml and the code its stages depend on."""
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, tmp_path / name)
    shutil.copytree(REPO / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    write_params(tmp_path / "params.yaml", small_run_params(raw_params, tmp_path))
    sh("git", "init", "-q", cwd=tmp_path)
    sh("dvc", "init", "-q", cwd=tmp_path)
    sh("dvc", "config", "core.analytics", "false", cwd=tmp_path)
    sh("git", "add", "-A", cwd=tmp_path)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init", cwd=tmp_path)
    return tmp_path


def ran(output: str) -> list[str]:
    return [stage for stage in ("pull", "augment", "train", "evaluate") if f"Running stage '{stage}'" in output]


def test_dvc_repro_runs_reruns_only_what_changed_and_logs_one_run_each(repo):
    first = sh("dvc", "repro", cwd=repo)
    assert ran(first.stdout) == ["pull", "augment", "train", "evaluate"]
    test_metrics = json.loads((repo / "metrics/test.json").read_text())
    assert test_metrics["accuracy"] > 0.8 and "loss" in test_metrics

    again = sh("dvc", "repro", cwd=repo)
    assert ran(again.stdout) == []

    shown = sh("dvc", "metrics", "show", "--json", cwd=repo)
    assert '"accuracy"' in shown.stdout and '"val_acc"' in shown.stdout
    sh("dvc", "plots", "show", "-o", str(repo / "plots_html"), cwd=repo)
    assert (repo / "plots_html/index.html").exists()

    params = (repo / "params.yaml").read_text().replace("lr: 0.003", "lr: 0.004")
    (repo / "params.yaml").write_text(params)
    changed = sh("dvc", "repro", cwd=repo)
    assert ran(changed.stdout) == ["train", "evaluate"]

    experiment = sh("dvc", "exp", "run", "-n", "faster-lr", "-S", "train.lr=0.005", cwd=repo)
    assert ran(experiment.stdout) == ["train", "evaluate"]

    client = MlflowClient(f"sqlite:///{repo}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("cnnpipe").experiment_id])
    assert sorted(run.data.params["train.lr"] for run in runs) == ["0.003", "0.004", "0.005"]
    assert all("test/accuracy" in run.data.metrics for run in runs)
    named = next(run for run in runs if run.data.params["train.lr"] == "0.005")
    assert named.info.run_name == "faster-lr" and named.data.tags["dvc.experiment"] == "faster-lr"
    first = next(run for run in runs if run.data.params["train.lr"] == "0.003")
    assert first.data.tags["git.dirty"] == "false" and len(first.data.tags["mlflow.source.git.commit"]) == 40
    assert "dvc.lock" in {artifact.path for artifact in client.list_artifacts(first.info.run_id)}
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert first.data.tags["dvc.data"] == (
        f"data/pulled:{lock['pull']['outs'][0]['md5']} data/augmented:{lock['augment']['outs'][0]['md5']}"
    )
