"""Fault injection for tracking that could be silently wrong: a registry version that is not this training's, the
evaluation compare picks, a run file naming the wrong run, a moved store under predict, and class names that a
metric name cannot tell apart. One real tiny training per module (an image folder whose class names differ only
in emoji), real SQLite MLflow stores; most cases run in this process (tests/faults.py)."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from pathlib import Path

import mlflow.tracking._model_registry.utils as registry_utils
import mlflow.tracking._tracking_service.utils as tracking_utils
import pytest
import yaml
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from cnnpipe.tracking.compare import PARENT_TAG, STAGE_TAG
from cnnpipe.tracking.evaluation_store import EVALUATION_RUN_TAG
from cnnpipe.tracking.registry import ACCURACY_TAG, CHAMPION
from cnnpipe.tracking.relocate import relocate_store
from tests.faults import invoke, refused_and_kept
from tests.helpers import REPO, run_cnnpipe, small_run_params, write_params
from tests.images import make_image_folder

pytestmark = pytest.mark.xdist_group("faults-tracking")  # one worker: its tiny training is made once

DATA = "pets"  # the image folder's name: the experiment's and the registered model's
CLASSES = ("cat😀", "cat😃", "dog")  # two names a metric name cannot tell apart: both become `cat_`


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """pull, augment, train (registered) and evaluate of a tiny image folder, once for this module."""
    root = tmp_path_factory.mktemp("trained")
    pictures = make_image_folder(root.parent / f"{root.name}-{DATA}" / DATA, CLASSES, per_class=10, size=(28, 28))
    raw = small_run_params(yaml.safe_load((REPO / "params.yaml").read_text()), root)
    raw["data"].update(source="imagefolder", path=str(pictures), classes=[], channels=1)
    raw["train"].update(batch_size=8)
    raw["mlflow"].update(tracking_uri="sqlite:///mlflow.db", register_model="always", system_metrics=False)
    write_params(root / "params.yaml", raw)
    for stage in ("pull", "augment", "train", "evaluate"):
        run_cnnpipe(stage, cwd=root)
    return root


@pytest.fixture
def done(tmp_path, trained) -> Path:
    """A private copy of `trained`."""
    root = tmp_path / "done"
    shutil.copytree(trained, root)
    return root


@pytest.fixture
def mlflow_globals(monkeypatch):
    """predict sets mlflow's global tracking URI: it is put back after the test."""
    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)
    monkeypatch.setattr(registry_utils, "_registry_uri", registry_utils._registry_uri)
    for exported in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.setenv(exported, "")
        monkeypatch.delenv(exported)


def client_of(root: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{root}/mlflow.db")


def stage_run(root: Path, stage: str):
    """The newest run of `stage` in `root`'s store."""
    client = client_of(root)
    experiment = client.get_experiment_by_name(DATA).experiment_id
    return client.search_runs([experiment], f"tags.`{STAGE_TAG}` = '{stage}'", order_by=["start_time DESC"])[0]


def other_training_registers(client: MlflowClient) -> str:
    """Another training registers a version of the same name in `client`'s store: version 1 of a store where
    the name is new. It is the champion, tested at 0.123456. Returns its run id."""
    experiment = client.get_experiment_by_name(DATA) or client.get_experiment(client.create_experiment(DATA))
    run_id = client.create_run(experiment.experiment_id, tags={STAGE_TAG: "train"}).info.run_id
    client.set_terminated(run_id)
    client.create_registered_model(DATA)
    version = client.create_model_version(DATA, f"runs:/{run_id}/model", run_id).version
    client.set_model_version_tag(DATA, version, ACCURACY_TAG, "0.123456")
    client.set_registered_model_alias(DATA, CHAMPION, version)
    return run_id


def assert_untouched(client: MlflowClient, run_id: str) -> None:
    version = client.get_model_version(DATA, "1")
    assert version.run_id == run_id
    assert version.tags == {ACCURACY_TAG: "0.123456"}, f"FAULT-LOST: the other version's tags became {version.tags}"
    assert version.aliases == [CHAMPION]


def evaluate_said(result, *words: str) -> None:
    assert "Traceback" not in result.stderr, f"FAULT-TRACEBACK: {result.stderr[-1500:]}"
    assert result.returncode == 0, f"FAULT-UNCLEAR: exit {result.returncode}: {result.stderr[-1500:]}"
    lines = [line for line in result.stderr.splitlines() if all(word in line for word in words)]
    assert len(lines) == 1, f"FAULT-SILENT: no one line names {words}: {result.stderr[-1500:]}"


# ---- the registry: only this training's version is tagged and promoted ---------------------------------------


def test_a_store_copied_from_another_clone_keeps_its_versions_tags_and_alias(tmp_path, done):
    other = tmp_path / "other"
    other.mkdir()
    run_id = other_training_registers(client_of(other))  # the other clone's training, version 1 there too
    shutil.copy(other / "mlflow.db", done / "mlflow.db")
    result = invoke("evaluate", cwd=done)
    assert_untouched(client_of(done), run_id)
    evaluate_said(result, f"{DATA} version 1", run_id)


def test_a_version_number_reused_by_another_training_in_the_same_store_is_left_alone(done):  # own case
    client = client_of(done)
    client.delete_registered_model(DATA)  # deleted by hand; another training registered the name anew
    run_id = other_training_registers(client)
    result = invoke("evaluate", cwd=done)
    assert_untouched(client, run_id)
    evaluate_said(result, f"{DATA} version 1", run_id)


def test_a_version_deleted_from_the_registry_is_said_once_and_not_recorded_as_unlogged(done):  # own case
    client_of(done).delete_model_version(DATA, "1")
    result = invoke("evaluate", cwd=done)
    evaluate_said(result, f"{DATA} version 1")
    assert "cnnpipe.unlogged" not in stage_run(done, "evaluate").data.tags  # nothing failed to log


# ---- data/train/run.json naming a run that is not a live training ---------------------------------------------


def _name_run(root: Path, run_id: str) -> None:
    run_file = root / "data/train/run.json"
    run_file.write_text(json.dumps({**json.loads(run_file.read_text()), "run_id": run_id}))


def test_a_run_file_naming_an_evaluation_run_is_refused(done):
    evaluation = stage_run(done, "evaluate").info.run_id
    _name_run(done, evaluation)
    refused_and_kept(done, "evaluate", names=("data/train/run.json", evaluation, "dvc repro train"))


def test_a_run_file_naming_a_deleted_run_is_refused(done):
    training = stage_run(done, "train").info.run_id
    client_of(done).delete_run(training)
    refused_and_kept(done, "evaluate", names=("data/train/run.json", training, "dvc repro train"))


# ---- predict in a moved repository ----------------------------------------------------------------------------


def _moved(tmp_path: Path, trained: Path) -> Path:
    """A copy of `trained` that is at home in its folder, then moved: its store names a folder that is gone."""
    first = tmp_path / "first"
    shutil.copytree(trained, first)
    relocate_store(first / "mlflow.db", DATA)
    return first.rename(tmp_path / "moved")


@pytest.mark.parametrize("model", [f"models:/{DATA}@{CHAMPION}", "runs"], ids=["champion", "runs-uri"])
def test_predict_of_a_registered_model_follows_a_moved_store(tmp_path, trained, mlflow_globals, model):
    moved = _moved(tmp_path, trained)
    if model == "runs":  # own case: a runs:/ URI takes the same path
        model = f"runs:/{stage_run(moved, 'train').info.run_id}/model"
    pictures = trained.parent / f"{trained.name}-{DATA}" / DATA
    result = invoke("predict", str(pictures / "dog"), "--model", model, cwd=moved)
    assert "Traceback" not in result.stderr, f"FAULT-TRACEBACK: {result.stderr[-1500:]}"
    assert result.returncode == 0, f"FAULT-UNCLEAR: exit {result.returncode}: {result.stderr[-1500:]}"
    assert len(list(csv.reader(io.StringIO(result.stdout)))) == 1 + 10  # a header, a row per picture


# ---- class names that only differ in characters a metric name cannot hold ---------------------------------------


def test_class_names_that_sanitize_alike_keep_a_metric_each(trained):
    logged = [key for key in stage_run(trained, "evaluate").data.metrics if key.startswith("test/acc/")]
    assert len(logged) == len(CLASSES), f"FAULT-SILENT: {len(CLASSES)} classes, per-class metrics {logged}"
    with (trained / "plots/per_class_accuracy.csv").open() as handle:
        assert [row["class"] for row in csv.DictReader(handle)] == list(CLASSES)  # the real names


def test_metric_names_stay_unique_whatever_the_class_names_sanitize_to():  # own case
    from cnnpipe.stages.evaluate import class_metric_keys

    classes = ["a?", "a!", "a__1", "a_", "T-shirt/top", "T-shirt_top"]
    keys = class_metric_keys(classes)
    assert len(set(keys)) == len(classes), f"FAULT-SILENT: {keys}"
    assert keys[4] != keys[5] and all(key.startswith("test/acc/") for key in keys)
    assert class_metric_keys(["Bag", "T-shirt/top"]) == ["test/acc/Bag", "test/acc/T-shirt_top"]  # as documented


# ---- compare: the evaluation a training names, NaN last, a deleted experiment ----------------------------------


def _run(client, experiment, stage, metrics, start, parent=None, tags=None):
    tags = {STAGE_TAG: stage, **({PARENT_TAG: parent} if parent else {}), **(tags or {})}
    run_id = client.create_run(experiment, start, tags).info.run_id
    client.log_batch(run_id, [Metric(key, value, start, 0) for key, value in metrics.items()])
    client.set_terminated(run_id)
    return run_id


def _compare(root: Path, *args: str) -> list[list[str]]:
    uri = f"sqlite:///{root}/mlflow.db"
    result = invoke("compare", "--tracking-uri", uri, "--experiment", "e", "--format", "csv", *args, cwd=root)
    assert result.returncode == 0 and "Traceback" not in result.stderr, f"FAULT-TRACEBACK: {result.stderr[-1500:]}"
    return list(csv.reader(io.StringIO(result.stdout)))


def test_compare_takes_the_evaluation_its_training_names_not_the_clocks_newest(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.create_experiment("e")
    training = _run(client, experiment, "train", {"best/val/acc": 0.9}, 1000)
    named = _run(client, experiment, "evaluate", {"test/acc": 0.9}, 2000, training)
    _run(client, experiment, "evaluate", {"test/acc": 0.5}, 9_000_000, training)  # a machine whose clock ran ahead
    client.set_tag(training, EVALUATION_RUN_TAG, named)
    rows = _compare(tmp_path)
    assert rows[1][rows[0].index("test/acc")] == "0.9000", f"FAULT-SILENT: {rows}"


def test_compare_falls_back_to_the_newest_live_evaluation_when_the_named_one_is_deleted(tmp_path):  # own case
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.create_experiment("e")
    training = _run(client, experiment, "train", {"best/val/acc": 0.9}, 1000)
    _run(client, experiment, "evaluate", {"test/acc": 0.7}, 2000, training)
    _run(client, experiment, "evaluate", {"test/acc": 0.8}, 3000, training)
    named = _run(client, experiment, "evaluate", {"test/acc": 0.9}, 4000, training)
    client.set_tag(training, EVALUATION_RUN_TAG, named)
    client.delete_run(named)
    rows = _compare(tmp_path)
    assert rows[1][rows[0].index("test/acc")] == "0.8000", f"FAULT-SILENT: {rows}"


@pytest.mark.parametrize("sort", ["accuracy", "loss"])
def test_compare_sorts_a_nan_metric_last_whichever_the_direction(tmp_path, sort):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.create_experiment("e")
    values = {"good": 0.9, "nan": math.nan, "worse": 0.6, "bad": 0.3}
    for name, value in values.items():
        metrics = {"test/acc": value, "test/loss": 1 - value}
        client.set_tag(_run(client, experiment, "train", metrics, 1000), "mlflow.runName", name)
    rows = _compare(tmp_path, "--sort", sort)
    assert [row[0] for row in rows[1:]] == ["good", "worse", "bad", "nan"], f"FAULT-SILENT: {rows}"


def test_compare_of_a_deleted_experiment_says_it_is_deleted_and_how_to_restore_it(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.create_experiment("e")
    _run(client, experiment, "train", {"test/acc": 0.9}, 1000)
    client.delete_experiment(experiment)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    refused_and_kept(
        tmp_path,
        "compare",
        "--tracking-uri",
        uri,
        "--experiment",
        "e",
        names=("'e'", "deleted", "mlflow experiments restore"),
    )
