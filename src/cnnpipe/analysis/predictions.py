"""What a trained model predicts for a split: per image the class and its probability, and the confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import track

from cnnpipe.console import console
from cnnpipe.data.datamodule import to_model_input
from cnnpipe.models.module import CnnClassifier


@dataclass(frozen=True)
class Predictions:
    labels: np.ndarray
    predicted: np.ndarray
    confidence: np.ndarray  # probability of the predicted class
    loss: float


@torch.inference_mode()
def predict(
    module: CnnClassifier, images: np.ndarray, labels: np.ndarray, batch_size: int, mirror: bool = False
) -> Predictions:
    """Runs the whole split through the model in batches; uint8 [N, H, W, C] in, per-image predictions out.

    `mirror` (test-time flip): the probabilities are the mean of the image's and its left-right mirror's, for a
    model trained on mirrored images; the loss is the cross-entropy of those mean probabilities."""
    predicted, confidence, total_loss = [], [], 0.0
    for start in track(range(0, len(images), batch_size), description="Evaluating", console=console):
        batch = to_model_input(images[start : start + batch_size])
        targets = torch.from_numpy(np.array(labels[start : start + batch_size]))
        probabilities = module.probabilities(module(batch))
        if mirror:
            probabilities = (probabilities + module.probabilities(module(batch.flip(3)))) / 2
        total_loss += float(F.nll_loss(probabilities.clamp_min(1e-12).log(), targets, reduction="sum"))
        best = probabilities.max(dim=1)
        predicted.append(best.indices.numpy())
        confidence.append(best.values.numpy())
    return Predictions(
        np.asarray(labels), np.concatenate(predicted), np.concatenate(confidence), total_loss / len(labels)
    )


def confusion(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(labels * num_classes + predicted, minlength=num_classes**2).reshape(num_classes, num_classes)
