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


def text_image(text: str, path: Path) -> Path:
    """Monospaced text (a table) as a picture: MLflow's image grid shows pictures of runs side by side, and
    nothing of a text artifact."""
    lines = text.rstrip().splitlines()
    figure = plt.figure(figsize=(0.075 * max(map(len, lines)) + 0.3, 0.17 * len(lines) + 0.3))
    figure.text(0, 1, "\n".join(lines), family="DejaVu Sans Mono", fontsize=9, va="top")
    return _save(figure, path)


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


def receptive_field_growth(
    names: Sequence[str], rf: Sequence[tuple[float, float]], input_hw: tuple[int, int], path: Path
) -> Path:
    """Receptive field (H and W) after each layer, against the input size: where the network sees it all."""
    figure, axes = plt.subplots(figsize=(max(6.0, 0.45 * len(names)), 4))
    depth = range(1, len(names) + 1)
    axes.plot(depth, [value[0] for value in rf], marker="o", label="rf height")
    axes.plot(depth, [value[1] for value in rf], marker="s", linestyle="--", label="rf width")
    axes.axhline(input_hw[0], color="grey", linestyle=":", label=f"input {input_hw[0]}x{input_hw[1]}")
    axes.set_xticks(list(depth), names, rotation=60, ha="right", fontsize=7)
    axes.set_ylabel("receptive field (pixels)")
    axes.set_title("Receptive field growth with depth")
    axes.grid(alpha=0.3)
    axes.legend()
    return _save(figure, path)


def erf_heatmap(
    erf: np.ndarray, box: tuple[float, float, float, float], fraction: float, title: str, path: Path
) -> Path:
    """The effective receptive field as a heatmap with the theoretical field of the same unit drawn on it."""
    top, left, bottom, right = box
    figure, axes = plt.subplots(figsize=(5, 5))
    image = axes.imshow(erf, cmap="inferno")
    axes.add_patch(
        plt.Rectangle(
            (left - 0.5, top - 0.5),
            right - left + 1,
            bottom - top + 1,
            fill=False,
            edgecolor="cyan",
            linewidth=1.5,
            label="theoretical field",
        )
    )
    axes.set_title(f"{title}\n95% of the gradient in {fraction:.0%} of the theoretical field", fontsize=9)
    axes.legend(loc="lower right", fontsize=7)
    figure.colorbar(image, ax=axes, fraction=0.046)
    return _save(figure, path)


def kernel_grid(weights: np.ndarray, path: Path, title: str) -> Path:
    """A conv layer's kernels [out, in, kH, kW], averaged over input channels, one small image each."""
    kernels = weights.mean(axis=1)
    columns = min(8, len(kernels))
    rows = -(-len(kernels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(1.2 * columns, 1.2 * rows + 0.5), squeeze=False)
    limit = float(np.abs(kernels).max()) or 1.0
    for axis in axes.flat:
        axis.axis("off")
    for index, (axis, kernel) in enumerate(zip(axes.flat, kernels, strict=False)):
        axis.imshow(kernel, cmap="RdBu_r", vmin=-limit, vmax=limit)  # red positive, blue negative weights
        axis.set_title(str(index), fontsize=7)
    figure.suptitle(title, fontsize=9)
    return _save(figure, path)


def feature_maps(image: np.ndarray, maps: dict[str, np.ndarray], path: Path, per_layer: int = 8) -> Path:
    """One input image and, for each conv layer, its first `per_layer` feature maps [C, H, W]."""
    figure, axes = plt.subplots(
        len(maps) + 1, per_layer, figsize=(1.3 * per_layer, 1.4 * (len(maps) + 1)), squeeze=False
    )
    for axis in axes.flat:
        axis.axis("off")
    grey = image.shape[0] == 1
    axes[0, 0].imshow(image[0] if grey else image.transpose(1, 2, 0), cmap="gray" if grey else None)
    axes[0, 0].set_title("input", fontsize=7)
    for row, (name, layer_maps) in enumerate(maps.items(), start=1):
        for column, feature in enumerate(layer_maps[:per_layer]):
            axes[row, column].imshow(feature, cmap="viridis")
            axes[row, column].set_title(f"{name}[{column}]", fontsize=6)
    figure.suptitle("Feature maps of one validation image", fontsize=9)
    return _save(figure, path)


def overlaid_curves(curves: dict[str, tuple[Sequence[float], Sequence[float]]], metric: str, path: Path) -> Path:
    """One metric per epoch for several runs in one axes, a line per run (label -> epochs, values): which run
    learns faster, and where one overfits, is seen at a glance."""
    figure, axes = plt.subplots(figsize=(6, 4))
    for label, (epochs, values) in curves.items():  # a label as text: no $math$; a leading _ would hide it
        text = label.replace("$", r"\$")
        axes.plot(epochs, values, marker="o", markersize=3, label=f" {text}" if text.startswith("_") else text)
    axes.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # epochs: no 2.5
    axes.set_xlabel("epoch")
    axes.set_ylabel(metric)
    axes.set_title(metric)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return _save(figure, path)
