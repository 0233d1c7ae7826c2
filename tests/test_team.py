"""A team shares one pipeline: a DVC remote, a clone that pulls, a copied repository, each with its own store.

Real `git`, `dvc` and `dvc repro` in temporary repositories; the remote is a local directory.
"""

import json
import shutil

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.helpers import REPO, SMALL_RUN, dvc_repo, sh, small_run_params

pytestmark = pytest.mark.e2e


def ran(output: str) -> list[str]:
    return [stage for stage in ("pull", "augment", "train", "evaluate") if f"Running stage '{stage}'" in output]


def runs(root, stage: str | None = None) -> list:
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    experiment = client.get_experiment_by_name(SMALL_RUN)
    found = client.search_runs([experiment.experiment_id]) if experiment else []
    return [run for run in found if stage is None or run.data.tags.get("cnnpipe.stage") == stage]


def set_param(root, old: str, new: str) -> None:
    params = root / "params.yaml"
    assert old in params.read_text()
    params.write_text(params.read_text().replace(old, new))


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    """The repository after `dvc repro`, its outputs pushed to a local DVC remote and its results committed.
    Made once: the tests clone or copy it and leave it as it is."""
    repo = tmp_path_factory.mktemp("team")
    dvc_repo(repo, small_run_params(yaml.safe_load((REPO / "params.yaml").read_text()), repo))
    remote = tmp_path_factory.mktemp("remote")
    sh("dvc", "repro", cwd=repo)
    sh("dvc", "remote", "add", "-d", "team", str(remote), cwd=repo)
    sh("dvc", "push", "-q", cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "results", cwd=repo)
    return repo


def test_a_clone_that_pulls_is_up_to_date_and_evaluates_into_its_own_store(pushed, tmp_path_factory):
    clone = tmp_path_factory.mktemp("teammate") / "cnnpipe"
    sh("git", "clone", "-q", str(pushed), str(clone), cwd=pushed)
    sh("dvc", "pull", "-q", cwd=clone)
    assert "up to date" in sh("dvc", "status", cwd=clone).stdout
    assert ran(sh("dvc", "repro", cwd=clone).stdout) == []
    assert str(pushed) not in (clone / "data/train/run.json").read_text()  # no path of the machine that trained

    before = len(runs(pushed))
    set_param(clone, "misclassified: 6", "misclassified: 4")
    rerun = sh("dvc", "repro", cwd=clone)
    assert ran(rerun.stdout) == ["evaluate"]
    assert "is not in" in rerun.stderr and "a run of its own" in rerun.stderr  # said plainly, not "Run not found"
    (evaluation,) = runs(clone)
    assert (
        evaluation.data.tags["cnnpipe.train_run_id"]
        == json.loads((clone / "data/train/run.json").read_text())["run_id"]
    )
    assert evaluation.info.artifact_uri.startswith((clone / "mlruns").as_uri())
    assert len(runs(pushed)) == before  # the original repository's store got nothing


def test_a_copied_repository_logs_into_its_own_store_and_artifact_folder(pushed, tmp_path_factory):
    copy = tmp_path_factory.mktemp("copied") / "cnnpipe"
    shutil.copytree(pushed, copy, symlinks=True)
    original = {run.info.run_id for run in runs(pushed)}
    original_folders = sorted(path.name for path in (pushed / "mlruns").rglob("*") if path.is_dir())

    set_param(copy, "lr: 0.003", "lr: 0.004")
    result = sh("dvc", "repro", cwd=copy)
    assert ran(result.stdout) == ["train", "evaluate"]
    new = [run for run in runs(copy) if run.info.run_id not in original]
    assert {run.data.tags["cnnpipe.stage"] for run in new} == {"train", "evaluate"}
    assert all(run.info.artifact_uri.startswith((copy / "mlruns").as_uri()) for run in new)
    assert {run.info.run_id for run in runs(pushed)} == original
    assert sorted(path.name for path in (pushed / "mlruns").rglob("*") if path.is_dir()) == original_folders
    copied = next(run for run in runs(copy) if run.info.run_id in original)
    assert copied.info.artifact_uri.startswith((copy / "mlruns").as_uri())  # the copied runs' files are the copy's
