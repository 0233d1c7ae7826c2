"""Evaluation on the untouched test split: accuracy, loss, per-class accuracy and the pictures that explain them."""

from __future__ import annotations

import csv
import json
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
from cnnpipe.tracking.mlflow_run import TrackedRun, open_run

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


def read_run_file(path: Path) -> dict:
    """train's record of its MLflow run: {"run_id", "tracking_uri", "unlogged"}."""
    if not path.exists():
        raise CnnpipeError(f"{path}: missing; rerun `dvc repro train` so evaluate knows the MLflow run")
    try:
        run = json.loads(path.read_text())
        valid = isinstance(run["run_id"], str) and isinstance(run["tracking_uri"], str)
        valid = valid and isinstance(run.get("unlogged", []), list)
    except (ValueError, TypeError, KeyError):
        valid = False
    if not valid:
        raise CnnpipeError(
            f"{path}: not a cnnpipe run file (JSON with run_id, tracking_uri, unlogged); rerun `dvc repro train`"
        )
    return run


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


def evaluate(params: Params, where: EvaluatePaths = EvaluatePaths()) -> dict:
    """Writes metrics/test.json and the plots, and logs them into the training's MLflow run.

    The model, the store and the run are all checked before anything is computed; the outputs are
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
    run_info = read_run_file(run_file)
    run = open_run(run_info["tracking_uri"], run_info["run_id"], run_file)
    test = splits["test"]
    result = predict(module, test.images, test.labels, params.evaluate.batch_size)
    matrix = confusion(result.labels, result.predicted, manifest.num_classes)
    per_class = matrix.diagonal() / np.maximum(matrix.sum(axis=1), 1)
    metrics = {
        "accuracy": float(matrix.trace() / matrix.sum()),
        "loss": result.loss,
        "count": int(matrix.sum()),
        "per_class": {name: float(acc) for name, acc in zip(manifest.classes, per_class, strict=True)},
    }
    with replaced_files(where.plots) as staging:
        figures = _write_plots(staging, result, matrix, test.images, manifest.classes, params.evaluate.misclassified)
        write_atomically(where.metrics / "test.json", json.dumps(metrics, indent=2))
    _log(run, run_info, metrics, [where.plots / figure.name for figure in figures])
    console.print(f"Test accuracy {metrics['accuracy']:.4f}, loss {metrics['loss']:.4f} on {metrics['count']} images")
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


def _log(run: TrackedRun, run_info: dict, metrics: dict, figures: list[Path]) -> None:
    per_class = {f"test/acc/{name}": value for name, value in metrics["per_class"].items()}
    run.log_metrics({"test/accuracy": metrics["accuracy"], "test/loss": metrics["loss"], **per_class})
    for figure in figures:
        run.log_artifact(figure, "evaluation")
    if LOCK_FILE.exists():  # under DVC: the hashes of every stage's deps and outs for this run
        run.log_artifact(LOCK_FILE)
    run.report_unlogged(earlier=run_info.get("unlogged", []))  # what train could not log, if anything
    run.finish()
