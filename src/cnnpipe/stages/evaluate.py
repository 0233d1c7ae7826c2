"""Evaluation on the untouched test split: accuracy, loss, per-class accuracy and the pictures that explain them.

Each evaluation is an MLflow run of its own, a child of the training run, holding evaluate's params and the
test metrics they produced; a registered model version gets its test accuracy, and the `champion` alias
moves to it when it beats the champion on the same test data.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np

from cnnpipe import plots
from cnnpipe.analysis.predictions import Predictions, confusion, predict
from cnnpipe.config import Params
from cnnpipe.console import console, warn
from cnnpipe.data.store import load_store
from cnnpipe.errors import CnnpipeError
from cnnpipe.models.hardware import inference_device, keep_freed_memory
from cnnpipe.models.module import load_model
from cnnpipe.outputs import replaced_files, write_atomically
from cnnpipe.paths import Paths
from cnnpipe.tracking import registry
from cnnpipe.tracking.dataset import dataset_inputs, dvc_hash
from cnnpipe.tracking.evaluation_store import EvaluationStore, evaluation_store, report_to_training
from cnnpipe.tracking.mlflow_run import TrackedRun, metric_key
from cnnpipe.tracking.run_record import RunRecord

LOCK_FILE = Path("dvc.lock")
TTA = {True: "hflip", False: "none"}  # what evaluate.tta resolved to, as the run's tag says it


def scores(result: Predictions, matrix: np.ndarray, classes: list[str]) -> tuple[dict[str, float], dict[str, float]]:
    """metrics/test.json's headline numbers, under the names MLflow shows, and each class's accuracy by class name
    for plots/per_class_accuracy.csv (as metrics, a column each, they widened `dvc metrics show` past a terminal)."""
    per_class = matrix.diagonal() / np.maximum(matrix.sum(axis=1), 1)
    headline = {
        "test/acc": float(matrix.trace() / matrix.sum()),
        "test/loss": result.loss,
        "test/count": int(matrix.sum()),
    }
    return headline, {name: float(acc) for name, acc in zip(classes, per_class, strict=True)}


def class_metric_keys(classes: list[str]) -> list[str]:
    """MLflow still gets each class's accuracy as a metric, `test/acc/<class>`: a `/` in a name becomes `_` (it would
    nest the chart), as does any character a metric name cannot hold (metric_key). Names that become alike (`cat😀`
    and `cat😃`: `cat_`) get their class index (`cat__0`, `cat__1`), or one class's value would overwrite another's."""
    bare = [metric_key(f"test/acc/{name.replace('/', '_')}") for name in classes]
    keys = list(bare)
    while clashing := {key for key, count in Counter(keys).items() if count > 1}:
        for i, base in enumerate(bare):  # an indexed key may meet another class's bare one: that is indexed next
            if keys[i] == base and base in clashing:
                keys[i] = f"{base}_{i}"
    return keys


def flip_at_test_time(tta: str, trained_mirrored: bool) -> bool:
    """evaluate.tta resolved: `auto` mirrors test images only for a model whose training mirrored them
    (digits or text would change class); hflip asks for it by name."""
    return tta == "hflip" or (tta == "auto" and trained_mirrored)


def run(params: Params, paths: Paths = Paths()) -> dict:
    """Writes metrics/test.json and the plots, and logs them into a new MLflow run under the training's.

    The model, the store and the tracking store are all checked before anything is computed; the outputs are
    written only once all of them are ready, so a failed evaluation leaves the previous ones in place.
    """
    module = load_model(paths.trained / "model.ckpt").to(
        inference_device(params.train.accelerator, params.train.devices)
    )
    manifest, splits = load_store(paths.pulled, verify=True)
    if manifest.classes != module.classes:
        raise CnnpipeError(
            f"{paths.trained / 'model.ckpt'}: trained on classes {module.classes}, but {paths.pulled} holds "
            f"{manifest.classes}; rerun `dvc repro` so train and evaluate see the same data"
        )
    run_file = paths.trained / "run.json"
    record = RunRecord.read(run_file)
    store = evaluation_store(record, run_file)
    test = splits["test"]
    mirror = flip_at_test_time(params.evaluate.tta, module.trained_mirrored)
    shift = params.evaluate.tta_shift
    keep_freed_memory()  # without it the views' activations were faulted in anew: 6-7 s became 6-19 s
    result = predict(module, test.images, test.labels, params.evaluate.batch_size, mirror, shift)
    matrix = confusion(result.labels, result.predicted, manifest.num_classes)
    metrics, per_class = scores(result, matrix, manifest.classes)
    with replaced_files(paths.plots) as staging:
        figures = _write_plots(
            staging, result, matrix, per_class, test.images, manifest.classes, params.evaluate.misclassified
        )
        write_atomically(paths.metrics / "test.json", json.dumps(metrics, indent=2))
    if store.note:
        warn(store.note)
    tracked = store.start()
    try:
        tracked.set_tag("evaluate.tta", TTA[mirror])
        logged = metrics | dict(zip(class_metric_keys(list(per_class)), per_class.values(), strict=True))
        _log(tracked, params, store, logged, [paths.plots / figure.name for figure in figures], paths.pulled)
    except BaseException as exc:
        tracked.end_after(exc)
        raise
    tracked.finish()
    console.print(
        f"Test accuracy {metrics['test/acc']:.4f}, loss {metrics['test/loss']:.4f} on {metrics['test/count']} images "
        f"(test-time augmentation: {TTA[mirror]}{f', shifts of up to {shift} px' if shift else ''}); "
        f"MLflow run {tracked.run_id}"
    )
    return metrics


def _write_plots(
    folder: Path,
    result: Predictions,
    matrix: np.ndarray,
    per_class: dict[str, float],
    images: np.ndarray,
    classes: list[str],
    count: int,
) -> list[Path]:
    with (folder / "predictions.csv").open("w", newline="") as handle:  # dvc plots' confusion template
        writer = csv.writer(handle)
        writer.writerow(["actual", "predicted"])
        writer.writerows((classes[a], classes[p]) for a, p in zip(result.labels, result.predicted, strict=True))
    with (folder / "per_class_accuracy.csv").open("w", newline="") as handle:  # dvc plots' bar_horizontal
        writer = csv.writer(handle)
        writer.writerow(["class", "accuracy"])
        writer.writerows(per_class.items())
    wrong = np.flatnonzero(result.labels != result.predicted)
    wrong = wrong[np.argsort(-result.confidence[wrong], kind="stable")][:count]  # the most confident mistakes first
    titles = [
        f"{classes[result.predicted[i]]} ({result.confidence[i]:.0%})\ntrue: {classes[result.labels[i]]}" for i in wrong
    ]
    return [
        plots.confusion_matrix(matrix, classes, folder / "confusion_matrix.png"),
        plots.image_grid(
            np.asarray(images[wrong]),
            titles,
            folder / "misclassified.png",
            title="Most confident mistakes: predicted (confidence), true class",
        ),
    ]


def _log(
    run: TrackedRun, params: Params, store: EvaluationStore, metrics: dict, figures: list[Path], pulled: Path
) -> None:
    record = store.record
    run.log_params({"evaluate": params.evaluate.model_dump(mode="json")})
    digest = dvc_hash(pulled)  # once: for the run's dataset and the champion's comparison
    run.log_call(
        "dataset", lambda: run.client.log_inputs(run.run_id, datasets=dataset_inputs(pulled, digest, ("test",)))
    )
    run.log_metrics(metrics)
    for figure in figures:
        run.log_artifact(figure, "evaluation")
    if LOCK_FILE.exists():  # under DVC: the hashes of every stage's deps and outs for this run
        run.log_artifact(LOCK_FILE)
    if store.training is not None:  # the training run learns what it is missing, and its end if that was lost
        training = TrackedRun(run.client, record.run_id, run.tracking_uri, list(record.unlogged))
        report_to_training(training, run, metrics)
        if store.training.info.status == "RUNNING":  # run.json is written by a finished training: its end was lost
            training.finish()
        else:
            training.report_unlogged()
    if record.model_version is not None:
        run.log_call(f"champion alias of {record.registered_model}", lambda: _promote(run, record, metrics, digest))


def _promote(run: TrackedRun, record: RunRecord, metrics: dict, digest: str) -> None:
    """The registered version gets its test accuracy and may become the champion, if it is this training's.

    Another training's version of that number (a store copied from another clone, a name registered anew) is left
    as it is, with a warning rather than a refusal: as in MLflow's registry, a version's tags and aliases speak of
    its own run's model only, while this evaluation of data/train/model.ckpt is right and is kept."""
    name, version = record.registered_model, record.model_version
    if problem := registry.not_of_run(run.client, name, version, record.run_id):
        warn(f"{problem}; nothing in the registry is changed: `dvc repro train` registers this model here")
    else:
        console.print(registry.promote(run.client, name, version, metrics["test/acc"], digest))
