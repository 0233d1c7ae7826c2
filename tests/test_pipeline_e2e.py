"""`dvc repro` end to end in a temporary git repository, with real DVC, real data and a real MLflow store."""

import json
import re
import shlex

import pytest
import yaml

from tests.helpers import REPO, sh, stage_runs

pytestmark = pytest.mark.e2e


def ran(output: str) -> list[str]:
    return [stage for stage in ("pull", "augment", "train", "evaluate") if f"Running stage '{stage}'" in output]


def readme_exps() -> list[str]:
    """The README's `exps` alias, the `dvc exp show` that fits 120 columns, as written there."""
    line = next(line for line in (REPO / "README.md").read_text().splitlines() if line.startswith("alias exps="))
    return shlex.split(shlex.split(line)[1].removeprefix("exps="))


def table(output: str) -> list[dict[str, str]]:
    """The rows of `dvc exp show`'s table by column name (cells are 2 or more spaces apart)."""
    header, *rows = [re.split(r"\s{2,}", line.strip()) for line in output.splitlines() if line.strip(" ─")]
    return [dict(zip(header, row, strict=True)) for row in rows]


def test_dvc_repro_runs_reruns_only_what_changed_and_logs_one_run_each(repo, monkeypatch):
    first = sh("dvc", "repro", cwd=repo)
    assert ran(first.stdout) == ["pull", "augment", "train", "evaluate"]
    test_metrics = json.loads((repo / "metrics/test.json").read_text())
    assert test_metrics["test/acc"] > 0.8 and "test/loss" in test_metrics
    sh("git", "add", "-A", cwd=repo)  # HEAD holds results, as a fresh clone's does
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "results", cwd=repo)

    again = sh("dvc", "repro", cwd=repo)
    assert ran(again.stdout) == []

    shown = sh("dvc", "metrics", "show", "--json", cwd=repo)
    assert '"test/acc"' in shown.stdout and '"best/val/acc"' in shown.stdout  # the names MLflow shows
    assert max(len(line) for line in sh("dvc", "metrics", "show", cwd=repo).stdout.splitlines()) <= 120
    sh("dvc", "plots", "show", "-o", str(repo / "plots_html"), cwd=repo)
    assert (repo / "plots_html/index.html").exists()

    params = (repo / "params.yaml").read_text().replace("lr: 0.003", "lr: 0.004")
    (repo / "params.yaml").write_text(params)
    changed = sh("dvc", "repro", cwd=repo)
    assert ran(changed.stdout) == ["train", "evaluate"]

    # --temp runs in a copy under .dvc/tmp/exps, as queued experiments do: the run still lands in ./mlflow.db
    experiment = sh(
        "dvc", "exp", "run", "--temp", "-n", "faster-lr", "-S", "train.lr=0.005", "-S", "train.epochs=1", cwd=repo
    )
    assert ran(experiment.stdout) == ["train", "evaluate"]

    # the README's form at 120 columns: whole cells, the changed params and test/acc of workspace, HEAD, experiment
    monkeypatch.setenv("COLUMNS", "120")
    shown = sh(*readme_exps(), cwd=repo).stdout
    assert max(len(line) for line in shown.splitlines()) <= 120 and "…" not in shown, shown
    workspace, head, faster = table(shown)
    assert (workspace["Experiment"], faster["Experiment"][-11:]) == ("workspace", "[faster-lr]"), shown
    assert [row["train.lr"] for row in (workspace, head, faster)] == ["0.004", "0.003", "0.005"], shown
    assert [row["train.epochs"] for row in (workspace, head, faster)] == ["2", "2", "1"], shown
    assert all(0.3 < float(row["test/acc"]) <= 1 for row in (workspace, head, faster)), shown

    client, runs = stage_runs(repo)
    assert sorted(run.data.params["train.lr"] for run in runs) == ["0.003", "0.004", "0.005"]
    _, evaluations = stage_runs(repo, "evaluate")
    assert {run.data.tags["mlflow.parentRunId"] for run in evaluations} == {run.info.run_id for run in runs}
    assert all("test/acc" in run.data.metrics for run in evaluations)
    named = next(run for run in runs if run.data.params["train.lr"] == "0.005")
    assert named.info.run_name == "faster-lr" and named.data.tags["dvc.experiment"] == "faster-lr"
    first = next(run for run in runs if run.data.params["train.lr"] == "0.003")
    assert first.data.tags["git.dirty"] == "false" and len(first.data.tags["mlflow.source.git.commit"]) == 40
    evaluated = next(run for run in evaluations if run.data.tags["mlflow.parentRunId"] == first.info.run_id)
    assert "dvc.lock" in {artifact.path for artifact in client.list_artifacts(evaluated.info.run_id)}
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert first.data.tags["dvc.data"] == (
        f"data/pulled:{lock['pull']['outs'][0]['md5']} data/augmented:{lock['augment']['outs'][0]['md5']}"
    )


def test_sweep_queues_its_whole_grid_as_dvc_experiments(repo):
    queued = sh("pipelines/sweeps/width_x_augmentation.sh", cwd=repo).stdout
    overrides = {line for line in queued.splitlines() if line.startswith("Queueing with overrides")}
    grid = {(width, online) for width in ("0.5", "1", "2") for online in ("True", "False")}
    assert overrides == {
        f"Queueing with overrides '{{'params.yaml': ['model.width={w}', 'augment.online={o}']}}'." for w, o in grid
    }
    status = sh("dvc", "queue", "status", cwd=repo).stdout
    assert status.count("Queued") == 6
