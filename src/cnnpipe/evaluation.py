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
from cnnpipe.tracking.mlflow_run import open_run

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
    module = CnnClassifier.load_from_checkpoint(checkpoint, map_location="cpu")
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


def evaluate(params: Params, where: EvaluatePaths = EvaluatePaths()) -> dict:
    """Writes metrics/test.json and the plots, and logs them into the training's MLflow run."""
    module = load_model(where.trained / "model.ckpt")
    manifest, splits = load_store(where.pulled)
    if manifest.classes != module.classes:
        raise CnnpipeError(
            f"{where.trained / 'model.ckpt'}: trained on classes {module.classes}, but {where.pulled} holds "
            f"{manifest.classes}; rerun `dvc repro` so train and evaluate see the same data"
        )
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
    where.metrics.mkdir(parents=True, exist_ok=True)
    (where.metrics / "test.json").write_text(json.dumps(metrics, indent=2))
    figures = _write_plots(where.plots, result, matrix, test.images, manifest.classes, params.evaluate.misclassified)
    _log(where.trained / "run.json", metrics, figures)
    console.print(f"Test accuracy {metrics['accuracy']:.4f}, loss {metrics['loss']:.4f} on {metrics['count']} images")
    return metrics


def _write_plots(
    folder: Path, result: Predictions, matrix: np.ndarray, images: np.ndarray, classes: list[str], count: int
) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
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


def _log(run_file: Path, metrics: dict, figures: list[Path]) -> None:
    if not run_file.exists():
        raise CnnpipeError(f"{run_file}: missing; rerun `dvc repro train` so evaluate knows the MLflow run")
    run_info = json.loads(run_file.read_text())
    run = open_run(run_info["tracking_uri"], run_info["run_id"])
    per_class = {f"test/acc/{name}": value for name, value in metrics["per_class"].items()}
    run.log_metrics({"test/accuracy": metrics["accuracy"], "test/loss": metrics["loss"], **per_class})
    for figure in figures:
        run.log_artifact(figure, "evaluation")
    if LOCK_FILE.exists():  # under DVC: the hashes of every stage's deps and outs for this run
        run.log_artifact(LOCK_FILE)
    run.report_unlogged(earlier=run_info.get("unlogged", []))  # what train could not log, if anything
    run.finish()
