"""Figures a person would rather look at than read: confusion matrix, image grids, training curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: stages run headless under DVC and in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(figure: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path


def confusion_matrix(matrix: np.ndarray, classes: Sequence[str], path: Path) -> Path:
    """Rows are true classes, columns predictions; each cell shows the count, colour the row fraction."""
    fractions = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.6 * len(classes) + 2)
    figure, axes = plt.subplots(figsize=(size, size))
    axes.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    axes.set_yticks(range(len(classes)), classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    for (row, column), count in np.ndenumerate(matrix):
        colour = "white" if fractions[row, column] > 0.5 else "black"
        axes.text(column, row, str(count), ha="center", va="center", color=colour, fontsize=8)
    axes.set_title(f"Confusion matrix ({matrix.trace() / max(matrix.sum(), 1):.2%} correct)")
    return _save(figure, path)


def image_grid(images: np.ndarray, titles: Sequence[str], path: Path, columns: int = 6, title: str = "") -> Path:
    """uint8 [N, H, W, C] images in a grid, each with a short title."""
    rows = max(1, -(-len(images) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.8 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, caption in zip(axes.flat, images, titles, strict=False):
        grey = image.shape[-1] == 1
        axis.imshow(image[..., 0] if grey else image, cmap="gray" if grey else None, vmin=0, vmax=255)
        axis.set_title(caption, fontsize=7)
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def training_curves(rows: Sequence[dict[str, float]], path: Path) -> Path:
    """Loss and accuracy per epoch, train beside validation."""
    epochs = [row["epoch"] for row in rows]
    figure, (loss_axis, acc_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in ((loss_axis, "loss"), (acc_axis, "acc")):
        for stage in ("train", "val"):
            values = [row.get(f"{stage}/{metric}", np.nan) for row in rows]
            axis.plot(epochs, values, marker="o", label=stage)
        axis.set_xlabel("epoch")
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
        axis.legend()
    return _save(figure, path)
