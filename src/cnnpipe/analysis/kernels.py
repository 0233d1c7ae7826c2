"""The lecture's hand-made kernels, applied to an image the way a conv layer applies its learned ones.

A CNN "convolution" multiplies the kernel with the pixels under it and sums them (cross-correlation, no
flip), so that is what `filter_image` does, with the same stride and zero padding as a conv layer.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cnnpipe.config import LimitsConfig
from cnnpipe.data.decode import decode
from cnnpipe.errors import CnnpipeError
from cnnpipe.layers import KERNELS


def kernel(name: str) -> torch.Tensor:
    if name not in KERNELS:
        raise CnnpipeError(f"kernel: unknown kernel {name!r}; valid: {', '.join(KERNELS)}")
    return torch.tensor(KERNELS[name], dtype=torch.float64)


def _check_window(size: tuple[int, ...], weights: torch.Tensor, stride: int, padding: int) -> None:
    """Before any pixel is computed: torch fails on these with a traceback, or allocates gigabytes of zeros."""
    side = weights.shape[-1]
    if not 1 <= stride <= max(size):
        raise CnnpipeError(
            f"--stride: must be 1 to {max(size)} (the image's larger side; beyond it the output is one pixel), "
            f"got {stride}"
        )
    if not 0 <= padding < side:
        raise CnnpipeError(
            f"--padding: must be 0 to {side - 1} for a {side}x{side} kernel (more padding only adds output pixels "
            f"that see nothing but zeros), got {padding}"
        )
    if min(size) + 2 * padding < side:
        raise CnnpipeError(f"kernel: the image {list(size)} is smaller than the kernel; add padding")


def filter_image(image: np.ndarray, name: str, stride: int = 1, padding: int = 0) -> np.ndarray:
    """One greyscale [H, W] image through one named kernel: the feature map, [H', W'] in float64."""
    weights = kernel(name)
    pixels = torch.as_tensor(np.asarray(image, dtype=np.float64))[None, None]
    _check_window(tuple(pixels.shape[-2:]), weights, stride, padding)
    return F.conv2d(pixels, weights[None, None], stride=stride, padding=padding)[0, 0].numpy()


def read_greyscale(path: Path, max_pixels: int = LimitsConfig().max_image_pixels) -> np.ndarray:
    """[H, W] in 0..255, decoded as `pull` decodes (16-bit and float images scaled, alpha over black)."""
    return decode(Path(path), 1, None, max_pixels, "IMAGE")[..., 0].astype(np.float64)


def _saves(image: Image.Image, format_name: str) -> bool:
    try:
        image.save(io.BytesIO(), format=format_name)
    except (OSError, ValueError):  # "HDF5 save handler not installed", "cannot write mode L as XBM"
        return False
    return True


def writable_suffixes() -> list[str]:
    """The extensions PIL saves a greyscale image as, found by trying (50 ms): it opens more formats than it
    writes, and registers savers that refuse, such as HDF5 without its plugin or XBM for all but 1-bit images."""
    blank = Image.new("L", (1, 1))
    extensions = Image.registered_extensions()
    return sorted(suffix for suffix, name in extensions.items() if name in Image.SAVE and _saves(blank, name))


def check_output(path: Path) -> None:
    """Before any pixel is computed: a name PIL cannot save would fail after the work. (That IMAGE is not written
    over is the CLI's rule for every --output, in outputs.py.)"""
    suffixes = writable_suffixes()
    if path.suffix.lower() not in suffixes:
        raise CnnpipeError(
            f"--output: PIL cannot write {repr(path.suffix) if path.suffix else 'a name without an extension'}; "
            f"use .png or another extension it writes: {', '.join(suffixes)}"
        )


def encode_feature_map(feature_map: np.ndarray, suffix: str) -> bytes:
    """Scales the feature map's range onto 0..255 (an edge map has negative values), as a `suffix` file's bytes."""
    low, high = float(feature_map.min()), float(feature_map.max())
    scaled = (feature_map - low) / (high - low) * 255 if high > low else np.zeros_like(feature_map)
    encoded = io.BytesIO()
    Image.fromarray(scaled.round().astype(np.uint8)).save(encoded, format=Image.registered_extensions()[suffix.lower()])
    return encoded.getvalue()
