"""Evaluation on the untouched test split: accuracy, loss, per-class accuracy and the pictures that explain them.

Each evaluation is an MLflow run of its own, a child of the training run, holding evaluate's params and the
test metrics they produced; a registered model version gets its test accuracy, and the `champion` alias
moves to it when it beats the champion on the same test data.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import track

from cnnpipe import paths, plots
from cnnpipe.config import Params
from cnnpipe.data.datamodule import to_model_input
from cnnpipe.data.store import load_store
from cnnpipe.errors import CnnpipeError
from cnnpipe.models.module import CnnClassifier
from cnnpipe.outputs import replaced_files, write_atomically
from cnnpipe.tracking import registry
from cnnpipe.tracking.dataset import dataset_inputs, dvc_hash
from cnnpipe.tracking.mlflow_run import TrackedRun, metric_key
from cnnpipe.tracking.run_record import EvaluationStore, RunRecord, evaluation_store

console = Console()
LOCK_FILE = Path("dvc.lock")


@dataclass(frozen=True)
class EvaluatePaths:
    pulled: Path = paths.PULLED
    trained: Path = paths.TRAINED
    metrics: Path = paths.METRICS
    plots: Path = paths.PLOTS


@dataclass(frozen=True)
class Predictions:
    labels: np.ndarray
    predicted: np.ndarray
    confidence: np.ndarray  # probability of the predicted class
    loss: float


def load_model(checkpoint: Path) -> CnnClassifier:
    if not checkpoint.exists():
        raise CnnpipeError(f"{checkpoint}: no trained model; run `dvc repro train` first")
    try:
        module = CnnClassifier.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, foreign or hand-edited: pickle, zip, key, type errors
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise CnnpipeError(f"{checkpoint}: not a readable cnnpipe model ({reason}); rerun `dvc repro train`") from None
    return module.eval()


@torch.inference_mode()
def predict(module: CnnClassifier, images: np.ndarray, labels: np.ndarray, batch_size: int) -> Predictions:
    """Runs the whole split through the model in batches; uint8 [N, H, W, C] in, per-image predictions out."""
    predicted, confidence, total_loss = [], [], 0.0
    for start in track(range(0, len(images), batch_size), description="Evaluating", console=console):
        batch = to_model_input(images[start : start + batch_size])
        targets = torch.from_numpy(np.array(labels[start : start + batch_size]))
        logits = module(batch)
        total_loss += float(module.loss(logits, targets)) * len(targets)
        probabilities = module.probabilities(logits)
        best = probabilities.max(dim=1)
        predicted.append(best.indices.numpy())
        confidence.append(best.values.numpy())
    return Predictions(
        np.asarray(labels), np.concatenate(predicted), np.concatenate(confidence), total_loss / len(labels)
    )


def confusion(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(labels * num_classes + predicted, minlength=num_classes**2).reshape(num_classes, num_classes)


def test_metrics(result: Predictions, matrix: np.ndarray, classes: list[str]) -> dict[str, float]:
    """metrics/test.json, under the names MLflow shows (a `/` in a class name would nest its chart)."""
    per_class = matrix.diagonal() / np.maximum(matrix.sum(axis=1), 1)
    return {
        "test/acc": float(matrix.trace() / matrix.sum()),
        "test/loss": result.loss,
        "test/count": int(matrix.sum()),
        **{
            metric_key(f"test/acc/{name.replace('/', '_')}"): float(acc)
            for name, acc in zip(classes, per_class, strict=True)
        },
    }


def evaluate(params: Params, where: EvaluatePaths = EvaluatePaths()) -> dict:
    """Writes metrics/test.json and the plots, and logs them into a new MLflow run under the training's.

    The model, the store and the tracking store are all checked before anything is computed; the outputs are
    written only once all of them are ready, so a failed evaluation leaves the previous ones in place.
    """
    module = load_model(where.trained / "model.ckpt")
    manifest, splits = load_store(where.pulled, verify=True)
    if manifest.classes != module.classes:
        raise CnnpipeError(
            f"{where.trained / 'model.ckpt'}: trained on classes {module.classes}, but {where.pulled} holds "
            f"{manifest.classes}; rerun `dvc repro` so train and evaluate see the same data"
        )
    run_file = where.trained / "run.json"
    record = RunRecord.read(run_file)
    store = evaluation_store(record, run_file)
    test = splits["test"]
    result = predict(module, test.images, test.labels, params.evaluate.batch_size)
    matrix = confusion(result.labels, result.predicted, manifest.num_classes)
    metrics = test_metrics(result, matrix, manifest.classes)
    with replaced_files(where.plots) as staging:
        figures = _write_plots(staging, result, matrix, test.images, manifest.classes, params.evaluate.misclassified)
        write_atomically(where.metrics / "test.json", json.dumps(metrics, indent=2))
    if store.note:
        print(f"warning: {store.note}", file=sys.stderr)
    run = store.start()
    try:
        _log(run, params, store, metrics, [where.plots / figure.name for figure in figures], where.pulled)
    except BaseException as exc:
        run.end_after(exc)
        raise
    run.finish()
    console.print(
        f"Test accuracy {metrics['test/acc']:.4f}, loss {metrics['test/loss']:.4f} on {metrics['test/count']} images; "
        f"MLflow run {run.run_id}"
    )
    return metrics


def _write_plots(
    folder: Path, result: Predictions, matrix: np.ndarray, images: np.ndarray, classes: list[str], count: int
) -> list[Path]:
    with (folder / "predictions.csv").open("w", newline="") as handle:  # dvc plots' confusion template
        writer = csv.writer(handle)
        writer.writerow(["actual", "predicted"])
        writer.writerows((classes[a], classes[p]) for a, p in zip(result.labels, result.predicted, strict=True))
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
    run.log_call("dataset", lambda: run.client.log_inputs(run.run_id, datasets=dataset_inputs(pulled, ("test",))))
    run.log_metrics(metrics)
    for figure in figures:
        run.log_artifact(figure, "evaluation")
    if LOCK_FILE.exists():  # under DVC: the hashes of every stage's deps and outs for this run
        run.log_artifact(LOCK_FILE)
    if record.unlogged and store.training is not None:  # the training run learns what it is missing
        TrackedRun(run.client, record.run_id, run.tracking_uri, list(record.unlogged)).report_unlogged()
    if record.model_version is not None:
        name, version, digest = record.registered_model, record.model_version, dvc_hash(pulled)
        run.log_call(
            f"champion alias of {name}",
            lambda: console.print(registry.promote(run.client, name, version, metrics["test/acc"], digest)),
        )
