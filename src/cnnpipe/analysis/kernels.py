"""The lecture's hand-made kernels, applied to an image the way a conv layer applies its learned ones.

A CNN "convolution" multiplies the kernel with the pixels under it and sums them (cross-correlation, no
flip), so that is what `filter_image` does, with the same stride and zero padding as a conv layer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from cnnpipe.errors import CnnpipeError

KERNELS: dict[str, list[list[float]]] = {
    "vertical_edge": [[1, 0, -1], [1, 0, -1], [1, 0, -1]],
    "horizontal_edge": [[1, 1, 1], [0, 0, 0], [-1, -1, -1]],
    "sobel_x": [[1, 0, -1], [2, 0, -2], [1, 0, -1]],
    "sobel_y": [[1, 2, 1], [0, 0, 0], [-1, -2, -1]],
    "laplacian": [[0, -1, 0], [-1, 4, -1], [0, -1, 0]],
    "box_blur": [[1 / 9] * 3] * 3,
    "sharpen": [[0, -1, 0], [-1, 5, -1], [0, -1, 0]],
    "emboss": [[-2, -1, 0], [-1, 1, 1], [0, 1, 2]],
    "lecture_x": [[1, 0, 1], [0, 1, 0], [1, 0, 1]],  # the lecture's worked example
}


def kernel(name: str) -> torch.Tensor:
    if name not in KERNELS:
        raise CnnpipeError(f"kernel: unknown kernel {name!r}; valid: {', '.join(KERNELS)}")
    return torch.tensor(KERNELS[name], dtype=torch.float64)


def filter_image(image: np.ndarray, name: str, stride: int = 1, padding: int = 0) -> np.ndarray:
    """One greyscale [H, W] image through one named kernel: the feature map, [H', W'] in float64."""
    weights = kernel(name)
    pixels = torch.as_tensor(np.asarray(image, dtype=np.float64))[None, None]
    if min(pixels.shape[-2:]) + 2 * padding < weights.shape[-1]:
        raise CnnpipeError(f"kernel: the image {list(pixels.shape[-2:])} is smaller than the kernel; add padding")
    return F.conv2d(pixels, weights[None, None], stride=stride, padding=padding)[0, 0].numpy()


def read_greyscale(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("L"), dtype=np.float64)
    except (FileNotFoundError, UnidentifiedImageError, OSError) as exc:
        raise CnnpipeError(f"IMAGE: cannot read {path}: {exc}") from None


def to_png(feature_map: np.ndarray, path: Path) -> Path:
    """Scales the feature map's range onto 0..255 (an edge map has negative values) and saves it."""
    low, high = float(feature_map.min()), float(feature_map.max())
    scaled = (feature_map - low) / (high - low) * 255 if high > low else np.zeros_like(feature_map)
    Image.fromarray(scaled.round().astype(np.uint8)).save(path)
    return path
