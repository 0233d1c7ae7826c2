"""RandomShift: an albumentations transform that moves an image by whole pixels, up to a fraction of its size.

Why our own: a padded random crop (PadIfNeeded + RandomCrop, 25 µs a 28x28 image) names the image's size, so it
breaks on every other size; albumentations' size-free equivalent, Affine(translate_percent=...), spends 86 µs
an image building matrices in Python around a 4 µs warpAffine, which halved the default training's images/s on 2
cores (4,550 against 9,000: docs/benchmarks.md, issue 26). A shift is a slice, at any size: 15 µs with the flip,
as Affine draws it. It is a real albumentations transform (saved in pipeline.json, seeded by `reseed`, drawn from
the image's own shape).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from albumentations.core.transforms_interface import BaseTransformInitSchema, ImageOnlyTransform
from pydantic import Field


def shifted(image: np.ndarray, dy: int, dx: int, fill: float = 0) -> np.ndarray:
    """`image` [H, W, ...] moved `dy` pixels down and `dx` right, the uncovered border `fill`."""
    height, width = image.shape[:2]
    out = np.full_like(image, fill)
    out[max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] = image[
        max(-dy, 0) : height + min(-dy, 0), max(-dx, 0) : width + min(-dx, 0)
    ]
    return out


class RandomShift(ImageOnlyTransform):
    """Moves the image by whole pixels, filling the uncovered border with `fill`: the draws of albumentations'
    Affine(translate_percent=(-max_fraction, max_fraction)), a fraction of each side drawn uniformly and truncated
    to pixels. At 28 x 28 and 0.1: -2..2 px, no shift a third of the time (a uniform -2..2, the padded crop's,
    trained to 0.9349 against Affine's 0.9376 over 3 seeds: docs/benchmarks.md); at 224 x 224 up to 22 px."""

    class InitSchema(BaseTransformInitSchema):
        max_fraction: float = Field(ge=0, lt=0.5)
        fill: float = Field(ge=0, le=255)

    def __init__(self, max_fraction: float = 0.1, fill: float = 0, p: float = 1.0):
        super().__init__(p=p)
        self.max_fraction, self.fill = max_fraction, fill

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, int]:
        height, width = params["shape"][:2]
        across, down = (self.py_random.uniform(-self.max_fraction, self.max_fraction) for _ in range(2))
        return {"dy": int(down * height), "dx": int(across * width)}  # int() truncates, as Affine does

    def apply(self, img: np.ndarray, dy: int, dx: int, **params: Any) -> np.ndarray:
        return shifted(img, dy, dx, self.fill)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("max_fraction", "fill")
