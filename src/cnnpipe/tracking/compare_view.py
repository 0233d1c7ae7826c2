"""A saved view of each experiment in the MLflow UI (its **Views** menu): the trainings ranked by test accuracy,
their val curves overlaid, and their pictures side by side without the wall of run parameters.

MLflow's own chart view generates an image card per image key that prints every run parameter above the image
(the default of its "Show run parameters" switch), which hides the picture of a run with 80 params; and it opens
on whatever metric comes first. The view is what a person would save by hand from the UI (**Save view**), stored
where the UI keeps saved views: the experiment tag `mlflow.sharedViewState.<id>`, a JSON envelope around the
page's state. It is written once per experiment and never over a view of the same id, so a person's edits of it
stay; a newer layout gets a new id. Checked against MLflow 3.17 (docs/mlflow-ui.md).
"""

from __future__ import annotations

import json
import time

from mlflow.tracking import MlflowClient

VIEW_ID = "cnnpipe-compare-v1"
VIEW_NAME = "cnnpipe: compare trainings"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_ID}"
PRIMARY_METRIC_TAG = "mlflow.experiment.primaryMetric.name"  # the UI's default chart view opens on it
OBJECTIVE = "test/acc"
SECTION, PICTURES = "cnnpipe-compare", "cnnpipe-pictures"
CURVES = ("val/acc", "val/loss", "train/loss")
# The keyed images of a training run (train's figures), in the order a person reads them.
IMAGES = (
    "receptive_field_table",
    "receptive_field_growth",
    "first_layer_kernels",
    "feature_maps",
    "effective_receptive_field",
    "training_curves",
    "preview",
)
SWEPT = ("train.lr", "train.epochs", "train.batch_size", "model.width")  # the parallel-coordinates axes
RUN_COLOR_TAG = "mlflow.runColor"
# matplotlib's tab10: distinct to most eyes. MLflow derives a colour from the run id by itself, and two runs of
# the 2-run test experiment got the same one, so overlaid curves could not be told apart.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22")


def _column(kind: str, key: str) -> str:
    return f"{kind}.`{key}`"


def _card(uuid: str, kind: str, section: str = SECTION, **fields: object) -> dict:
    base = {"uuid": uuid, "type": kind, "runsCountToCompare": 10, "metricSectionId": section, "deleted": False}
    return {**base, "isGenerated": False, **fields}


def _line(key: str) -> dict:
    return _card(
        f"cnnpipe-{key}", "LINE", metricKey=key, displayName=key, selectedMetricKeys=[key], lineSmoothness=0,
        xAxisKey="step", xAxisScaleType="linear", scaleType="linear", selectedXAxisMetricKey="", yAxisKey="metric",
        yAxisExpressions=[], ignoreOutliers=False, useGlobalXaxisKey=True, useGlobalLineSmoothing=True,
        range={},
    )  # fmt: skip


def state() -> dict:
    """The page state of the view: MLflow's search facets and UI state, as its Save view stores them."""
    cards = [
        _card(f"cnnpipe-{OBJECTIVE}", "BAR", metricKey=OBJECTIVE, displayName=OBJECTIVE),
        *map(_line, CURVES),
        _card("cnnpipe-parallel", "PARALLEL", selectedParams=list(SWEPT), selectedMetrics=[OBJECTIVE]),
        *(_card(f"cnnpipe-{key}", "IMAGE", PICTURES, imageKeys=[key], step=0, showRunParams=False) for key in IMAGES),
    ]
    # Two cards a row, 640 px tall (MLflow: 3 x 360 px): room for two runs' pictures, one above the other.
    sections = [
        {"uuid": SECTION, "name": "Compare trainings", "display": True, "isReordered": True},
        {"uuid": PICTURES, "name": "What the networks see", "display": True, "isReordered": True, "columns": 2,
         "cardHeight": 640},
    ]  # fmt: skip
    return {
        "searchFilter": "tags.`cnnpipe.stage` = 'train'",  # trainings only: their evaluations are child runs
        "orderByKey": _column("metrics", OBJECTIVE),
        "orderByAsc": False,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "modelVersionFilter": "All Runs",
        "datasetsFilter": [],
        "selectedColumns": [
            _column("metrics", OBJECTIVE),
            _column("metrics", "best/val/acc"),
            *(_column("params", key) for key in SWEPT),
        ],  # no Dataset column: the experiment is the data set's, and its wide cells pushed test/acc off screen
        "compareRunCharts": cards,
        "compareRunSections": sections,
        "isAccordionReordered": True,  # keep these sections first; MLflow appends its generated ones after them
        "hideEmptyCharts": True,
        "viewMaximized": False,
        "runListHidden": False,
        "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""},
    }


def prepare_for_comparison(client: MlflowClient, experiment_id: str, run_id: str) -> None:
    """A new training's colour, the experiment's view and primary metric (each unless a person chose it)."""
    _ensure_view(client, experiment_id)
    recent = client.search_runs(
        [experiment_id], f"tags.`cnnpipe.stage` = 'train' and attributes.run_id != '{run_id}'", max_results=8,
        order_by=["attributes.start_time DESC"],
    )  # fmt: skip
    taken = {run.data.tags.get(RUN_COLOR_TAG) for run in recent}
    client.set_tag(run_id, RUN_COLOR_TAG, next(color for color in PALETTE if color not in taken))


def _ensure_view(client: MlflowClient, experiment_id: str) -> None:
    tags = client.get_experiment(experiment_id).tags
    now = int(time.time() * 1000)
    if VIEW_TAG not in tags:
        envelope = {"name": VIEW_NAME, "createdAt": now, "updatedAt": now, "state": json.dumps(state())}
        client.set_experiment_tag(experiment_id, VIEW_TAG, json.dumps(envelope))
    if PRIMARY_METRIC_TAG not in tags:
        client.set_experiment_tag(experiment_id, PRIMARY_METRIC_TAG, OBJECTIVE)
