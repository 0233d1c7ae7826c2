"""What a trained model predicts for a split: per image the class and its probability, and the confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import track

from cnnpipe.console import console
from cnnpipe.data.datamodule import to_model_input
from cnnpipe.models.hardware import uses_channels_last
from cnnpipe.models.module import CnnClassifier


@dataclass(frozen=True)
class Predictions:
    labels: np.ndarray
    predicted: np.ndarray
    confidence: np.ndarray  # probability of the predicted class
    loss: float


@torch.inference_mode()
def predict(
    module: CnnClassifier,
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    mirror: bool = False,
    shift: int = 0,
) -> Predictions:
    """Runs the whole split through the model, on the module's device, in batches; uint8 [N, H, W, C] in,
    per-image predictions out.

    Test-time augmentation: the probabilities are the mean over the image's `views` (its left-right mirror for a
    model trained on mirrored images, shifts of up to `shift` pixels); the loss is the cross-entropy of that mean.
    The weights (in place) and each view take the memory format `train.channels_last` gives the module's device
    in fp32, the precision of the exported model: NHWC on a CPU, where the 18 views of the default ran in 6-7 s
    instead of 11-16 s, with the same probabilities."""
    nhwc = uses_channels_last(module.train_config.channels_last, module.device.type, "32-true")
    memory_format = torch.channels_last if nhwc else torch.contiguous_format
    module = module.to(memory_format=memory_format)
    predicted, confidence, total_loss = [], [], 0.0
    for start in track(range(0, len(images), batch_size), description="Evaluating", console=console):
        batch = to_model_input(images[start : start + batch_size]).to(module.device)
        targets = torch.from_numpy(np.array(labels[start : start + batch_size])).to(module.device)
        probabilities = torch.stack(
            [
                module.probabilities(module(view.contiguous(memory_format=memory_format)))
                for view in views(batch, mirror, shift)
            ]
        )
        probabilities = probabilities.mean(0)
        total_loss += float(F.nll_loss(probabilities.clamp_min(1e-12).log(), targets, reduction="sum"))
        best = probabilities.max(dim=1)
        predicted.append(best.indices.cpu().numpy())
        confidence.append(best.values.cpu().numpy())
    return Predictions(
        np.asarray(labels), np.concatenate(predicted), np.concatenate(confidence), total_loss / len(labels)
    )


def views(batch: torch.Tensor, mirror: bool = False, shift: int = 0) -> list[torch.Tensor]:
    """A batch [N, C, H, W] as test-time augmentation sees it: itself and, with `mirror`, its left-right mirror;
    each moved by every (dx, dy) up to `shift` pixels, the uncovered border black, as a random crop of an image
    padded with zeros shows it in training."""
    flips = [batch, batch.flip(3)] if mirror else [batch]
    if not shift:
        return flips
    height, width = batch.shape[-2:]
    moves = range(-shift, shift + 1)
    padded = [F.pad(image, (shift, shift, shift, shift)) for image in flips]
    return [
        image[..., shift + dy : shift + dy + height, shift + dx : shift + dx + width]
        for image in padded
        for dy in moves
        for dx in moves
    ]


def confusion(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(labels * num_classes + predicted, minlength=num_classes**2).reshape(num_classes, num_classes)
