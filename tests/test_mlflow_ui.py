"""The MLflow 3 UI, in a real headless chromium: what the README tells users to open and click is there.

A real `mlflow server` holds what a real `cnnpipe train` + `cnnpipe evaluate` logged: a training run (params,
per-epoch metrics, keyed images, its dataset, source and user), its evaluation child run, and the registered
model version with the alias `champion`. Screenshots of each page land in $CNNPIPE_SCREENSHOTS or
tests/screenshots/ for a person to look at.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml
from mlflow.tracking import MlflowClient

from cnnpipe.tracking.compare_view import IMAGES, VIEW_ID, VIEW_NAME
from cnnpipe.tracking.registry import DESCRIPTION
from tests.browser import capture, capture_after, ensure_chromium, screenshot_dir, visible_text
from tests.helpers import REPO, SMALL_RUN, run_cnnpipe, small_run_params, write_params
from tests.mlflow_server import MlflowServer, free_port

pytestmark = pytest.mark.e2e

EXPERIMENT = MODEL = SMALL_RUN  # named from small_run_params's data
REMOTE = "https://github.com/example/cnnpipe.git"
OTHER_LR = 0.01  # the second training's train.lr (the first trains with params.yaml's)


@dataclass(frozen=True)
class Store:
    """What the store holds, as the UI should show it."""

    experiment_id: str
    run_id: str  # the training the champion version came from
    run_name: str
    other_run_id: str  # the other training, with another train.lr
    other_run_name: str
    param: tuple[str, str]  # one param (key, value) of the run
    metrics: tuple[str, ...]  # per-epoch metric keys of the run; the first one sorts the runs list
    child_run_id: str
    child_run_name: str
    child_metric: str
    dataset_name: str
    dataset_digest: str
    source: str  # the Source as the UI shows it
    branch: str
    commit: str
    user: str
    model: str
    model_description: str
    version: str
    version_tag: tuple[str, str]
    version_description: str
    alias: str
    image_key: str


def build_store(server: MlflowServer, root: Path, data: Path) -> Store:
    """A real `cnnpipe train` + `cnnpipe evaluate` logged to the server, from a git clone of a GitHub repository."""
    raw = small_run_params(yaml.safe_load((REPO / "params.yaml").read_text()), root)
    raw["mlflow"].update(tracking_uri=server.url, register_model="always")  # a smoke run, registered all the same
    write_params(root / "params.yaml", raw)
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    for command in (
        ["init", "-q"],
        ["remote", "add", "origin", REMOTE],
        ["add", "params.yaml"],
        ["commit", "-qm", "p"],
    ):
        subprocess.run([*git, *command], cwd=root, check=True)
    shutil.copytree(data, root / "data")
    for lr in (raw["train"]["lr"], OTHER_LR):  # two trainings to compare, each evaluated
        raw["train"]["lr"] = lr
        write_params(root / "params.yaml", raw)
        run_cnnpipe("train", cwd=root)
        run_cnnpipe("evaluate", cwd=root)

    client = MlflowClient(server.url)
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    version = client.get_model_version_by_alias(MODEL, "champion")
    trainings = client.search_runs([experiment_id], "tags.`cnnpipe.stage` = 'train'")
    (training,) = [run for run in trainings if run.info.run_id == version.run_id]  # the champion's
    (other,) = [run for run in trainings if run.info.run_id != version.run_id]
    (evaluation,) = client.search_runs(
        [experiment_id], f"tags.`cnnpipe.stage` = 'evaluate' and tags.`mlflow.parentRunId` = '{training.info.run_id}'"
    )
    tags = training.data.tags
    return Store(
        experiment_id=experiment_id,
        run_id=training.info.run_id,
        run_name=training.info.run_name,
        other_run_id=other.info.run_id,
        other_run_name=other.info.run_name,
        param=("train.lr", training.data.params["train.lr"]),
        metrics=("val/acc", "train/loss"),
        child_run_id=evaluation.info.run_id,
        child_run_name=evaluation.info.run_name,
        child_metric="test/acc",
        dataset_name="fashion-mnist/train",
        dataset_digest=training.inputs.dataset_inputs[0].dataset.digest,
        source="cnnpipe:train",  # a PROJECT source shows as <repository name>:<entry point>
        branch=tags["mlflow.source.git.branch"],
        commit=tags["mlflow.source.git.commit"],
        user=tags["mlflow.user"],
        model=MODEL,
        model_description=DESCRIPTION.split(". ")[0],  # the first sentence: the UI renders the rest as markdown
        version=str(version.version),
        version_tag=("test.acc", version.tags["test.acc"]),
        version_description=version.description,
        alias="champion",
        image_key="training_curves",
    )


# ---------------------------------------------------------------------------------------------------------------
# The UI's pages, as docs/mlflow-ui.md names them. `workflowType=machine_learning` is the sidebar's "Model training"
# switch: without it MLflow 3 opens an experiment on its GenAI "Overview" (traces) page.
ML = "workflowType=machine_learning"


def experiment_url(server: MlflowServer, store: Store) -> str:
    return f"{server.url}/#/experiments/{store.experiment_id}"


def runs_url(server: MlflowServer, store: Store, *query: str) -> str:
    return f"{experiment_url(server, store)}/runs?{'&'.join((ML, *query))}"


def view_url(server: MlflowServer, store: Store, *query: str) -> str:
    """The runs page in cnnpipe's saved view, as MLflow's Views menu opens it."""
    return runs_url(server, store, f"viewStateShareKey={VIEW_ID}", *query)


def run_url(server: MlflowServer, store: Store, run_id: str) -> str:
    return f"{experiment_url(server, store)}/runs/{run_id}?{ML}"


@pytest.fixture(scope="module")
def ui(tmp_path_factory, prepared_data):
    """A real `mlflow server` serving what a real training logged, and the chromium to look at it with."""
    ensure_chromium()
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-ui"), free_port()).start()
    try:
        yield server, build_store(server, tmp_path_factory.mktemp("cnnpipe"), prepared_data)
    finally:
        server.stop()


def look(url: str, name: str, **window) -> tuple[str, str]:
    """Screenshot `url` into the screenshot folder as `name`; its rendered HTML and visible text."""
    path = screenshot_dir() / name
    html = capture(url, path, **window)
    return html, visible_text(html)


def shows(text: str, *pattern: str) -> bool:
    """Whether the words of `pattern` appear in `text` in that order, separated by whitespace only."""
    return re.search(r"\s*".join(re.escape(part) for part in pattern), text) is not None


def must_show(text: str, name: str, *pattern: str) -> None:
    assert shows(text, *pattern), f"{' '.join(pattern)!r} is not on the page (see {screenshot_dir() / name}): {text}"


def test_an_experiment_opens_on_the_genai_overview_not_the_runs(ui):
    server, store = ui
    name = "mlflow-ui-1-experiment-default-genai-overview.png"
    _, text = look(experiment_url(server, store), name)
    must_show(text, name, "Overview", "Usage", "Quality")  # the GenAI overview, with the Model training switch
    must_show(text, name, "GenAI", "Model training")
    assert store.run_name not in text and store.dataset_name not in text


def test_runs_list_shows_the_run_its_dataset_and_source(ui):
    server, store = ui
    name = "mlflow-ui-2-runs.png"
    _, text = look(runs_url(server, store), name)
    must_show(text, name, "Runs")
    must_show(text, name, "Run Name", "Created", "Dataset", "Duration", "Source")
    must_show(text, name, store.run_name)
    must_show(text, name, f"{store.dataset_name} ({store.dataset_digest})")
    must_show(text, name, store.source)
    assert store.child_run_name not in text, "child runs are folded under their parent, behind its [+]"


def test_runs_list_sorted_by_a_metric_shows_the_child_run(ui):
    server, store = ui
    name = "mlflow-ui-3-runs-with-child-run.png"
    order = "orderByKey=" + quote(f"metrics.`{store.metrics[0]}`", safe="")
    _, text = look(runs_url(server, store, order, "orderByAsc=false"), name)
    must_show(text, name, "Sort:", store.metrics[0])
    must_show(text, name, store.run_name)
    must_show(text, name, store.child_run_name)


def test_run_overview_shows_user_source_commit_dataset_child_run_params_metrics_and_model(ui):
    server, store = ui
    name = "mlflow-ui-4-run-overview.png"
    _, text = look(run_url(server, store, store.run_id), name, window=(1600, 1500))
    must_show(text, name, store.run_name, "Overview", "Model metrics", "System metrics", "Traces", "Artifacts")
    must_show(text, name, "Created by", store.user)
    must_show(text, name, "Source", store.source, store.branch, store.commit[:7])  # the full hash: a tooltip
    must_show(text, name, "Datasets", f"{store.dataset_name} ({store.dataset_digest})", "train")
    must_show(text, name, "Child runs", store.child_run_name)
    must_show(text, name, "Registered models", store.model, f"v{store.version}")
    must_show(text, name, *store.param)
    for metric in store.metrics:
        must_show(text, name, metric)


def test_child_run_overview_has_its_own_metric_and_not_the_parents_dataset_or_model(ui):
    """The negative control: what the run page asserts above is absent where it was not logged."""
    server, store = ui
    name = "mlflow-ui-5-child-run-overview.png"
    _, text = look(run_url(server, store, store.child_run_id), name, window=(1600, 1500))
    must_show(text, name, store.child_run_name)
    must_show(text, name, store.child_metric)
    must_show(text, name, "Created by", store.user)
    assert store.dataset_name not in text
    assert not shows(text, "Registered models", store.model)
    assert not shows(text, "Child runs", store.child_run_name)


def test_charts_view_shows_the_keyed_image_as_an_image_grid(ui):
    server, store = ui
    name = "mlflow-ui-6-runs-charts-image-grid.png"
    html, text = look(runs_url(server, store, "compareRunsMode=CHART"), name, window=(1600, 5200))
    must_show(text, name, "Model metrics")  # the section MLflow puts a generated image grid per image key in
    must_show(text, name, store.image_key)
    image = re.escape(quote(f"images/{store.image_key}+step+0+", safe=""))
    assert re.search(rf'<img [^>]*src="get-artifact\?path={image}[^"]*run_uuid={store.run_id}"', html), (
        f"no <img> of the {store.image_key} image in the chart view (see {screenshot_dir() / name})"
    )


def test_registered_model_page_shows_the_version_its_alias_tag_and_description(ui):
    server, store = ui
    name = "mlflow-ui-7-registered-model.png"
    _, text = look(f"{server.url}/#/models/{store.model}", name)
    must_show(text, name, "Registered Models", store.model)
    must_show(text, name, "Version", "Registered at", "Created by", "Tags", "Aliases", "Description")
    must_show(text, name, "Description", "Edit", store.model_description)
    must_show(text, name, f"Version {store.version}")
    must_show(text, name, store.version_tag[0], ":", store.version_tag[1])
    must_show(text, name, "@", store.alias)


def test_model_version_page_shows_alias_source_run_tags_and_description(ui):
    server, store = ui
    name = "mlflow-ui-8-model-version.png"
    _, text = look(f"{server.url}/#/models/{store.model}/versions/{store.version}", name)
    must_show(text, name, f"Version {store.version}")
    must_show(text, name, "Source Run", ":", store.run_name)
    must_show(text, name, "Aliases", ":", "@", store.alias)
    must_show(text, name, "Tags", "Name", "Value", "Actions")
    must_show(text, name, *store.version_tag)  # the tags in alphabetical order: data.digest, git.commit, ...
    must_show(text, name, "Description", "Edit", store.version_description)


# ---------------------------------------------------------------------------------------------------------------
# Comparing trainings (docs/mlflow-ui.md, section 3): the view cnnpipe saves in each experiment, and the Compare page.


def test_the_saved_view_ranks_the_trainings_by_their_test_accuracy(ui):
    server, store = ui
    name = "mlflow-ui-9-view-runs-by-test-acc.png"
    html, text = look(view_url(server, store), name)
    must_show(text, name, VIEW_NAME)
    must_show(text, name, "Sort:", "test/acc")
    must_show(text, name, "Metrics", "Parameters")
    for column in ("best/val/acc", "test/acc", "model.width", "train.lr"):
        must_show(text, name, column)
    assert store.child_run_name not in text, "the view lists trainings only"
    # both trainings' rows carry a test/acc cell, the champion's (the better one) first
    assert len(re.findall(r'role="gridcell" col-id="metrics\.`test/acc`"', html)) == 2
    assert text.index(store.run_name) < text.index(store.other_run_name)


def test_the_saved_view_shows_both_trainings_pictures_without_their_parameters(ui):
    server, store = ui
    name = "mlflow-ui-10-view-charts-images.png"
    # MLflow draws only the cards on screen: a window tall enough for all of them
    html, text = look(view_url(server, store, "compareRunsMode=CHART"), name, window=(1600, 4000))
    must_show(text, name, "Compare trainings")
    for chart in ("test/acc", "val/acc", "val/loss", "train/loss", "Parallel Coordinates"):
        must_show(text, name, chart)
    for key in IMAGES:
        must_show(text, name, key)
        for run_id in (store.run_id, store.other_run_id):
            image = re.escape(quote(f"images/{key}+step+0+", safe=""))
            assert re.search(rf'<img [^>]*src="get-artifact\?path={image}[^"]*run_uuid={run_id}"', html), (
                f"no <img> of {key} of run {run_id} in the view (see {screenshot_dir() / name})"
            )
    assert f"{store.param[0]}={store.param[1]}" not in text, "image cards print every run parameter again"


def test_the_compare_page_shows_test_acc_against_the_changed_param_in_three_clicks(ui):
    """docs/mlflow-ui.md's clicks: the parallel-coordinates plot opens on the metric logged first (`parameters`)."""
    server, store = ui
    name = "mlflow-ui-11-compare-page-test-acc.png"
    runs, experiments = quote(json.dumps([store.run_id, store.other_run_id])), quote(json.dumps([store.experiment_id]))
    url = f"{server.url}/#/compare-runs?runs={runs}&experiments={experiments}"
    metrics = "document.querySelectorAll('.du-bois-light-select')[1]"

    def pick_test_acc(page):
        page.click(f"{metrics}.querySelector('.du-bois-light-select-selection-item-remove')")  # the ✕ of parameters
        page.click(f"{metrics}.querySelector('input')")
        page.type("test/acc")
        page.click("document.querySelector('h1, h2')")  # closes the drop-down
        page.evaluate("window.scrollTo(0, 0)")

    ready = f"{metrics}?.querySelector('.du-bois-light-select-selection-item-remove')"
    html = capture_after(url, screenshot_dir() / name, ready, pick_test_acc)
    text = visible_text(html)
    must_show(text, name, "Parameters:", store.param[0], "Metrics:", "test/acc")
    axes = re.findall(r'<text[^>]*class="axis-title"[^>]*>([^<]*)</text>', html)
    assert axes == [store.param[0], "test/acc"], f"parallel coordinates axes {axes} (see {screenshot_dir() / name})"
