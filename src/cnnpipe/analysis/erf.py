"""Effective receptive field (Luo et al., NeurIPS 2016): where, inside the theoretical field, the network looks.

The gradient of the central unit of a feature map with respect to the input, in absolute value, averaged
over real images. It is usually a Gaussian-like blob much smaller than the theoretical field.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cnnpipe.analysis.receptive_field import LayerField


def effective_receptive_field(model: nn.Module, layer: str, images: torch.Tensor) -> np.ndarray:
    """Mean |d unit / d input| over `images` [N, C, H, W] for the central unit of `layer`, summed over channels
    of both: an [H, W] map that sums to 1."""
    module = dict(model.named_modules())[layer]
    captured: dict[str, torch.Tensor] = {}
    hook = module.register_forward_hook(lambda _module, _inputs, output: captured.__setitem__("out", output))
    was_training = model.training
    model.eval()
    total = torch.zeros(images.shape[-2:], dtype=torch.float64)
    try:
        for image in images:
            x = image[None].clone().requires_grad_(True)
            model(x)
            out = captured["out"]
            centre = out[0, :, out.shape[-2] // 2, out.shape[-1] // 2].sum()
            (gradient,) = torch.autograd.grad(centre, x)
            total += gradient[0].abs().sum(dim=0).double()
    finally:
        hook.remove()
        model.train(was_training)
    mass = total.sum()
    return (total / mass).numpy() if mass > 0 else total.numpy()


def central_field_box(field: LayerField, shape: tuple[int, ...]) -> tuple[float, float, float, float]:
    """(top, left, bottom, right) of the central unit's theoretical field, cut to the image."""
    box = []
    for axis in (0, 1):
        centre = field.start[axis] + (field.out_shape[1 + axis] // 2) * field.jump[axis]
        half = (field.rf[axis] - 1) / 2
        box.append((max(centre - half, 0), min(centre + half, shape[-2 + axis] - 1)))
    return box[0][0], box[1][0], box[0][1], box[1][1]


def mass_fraction(erf: np.ndarray, field: LayerField, mass: float = 0.95) -> float:
    """The fewest pixels that hold `mass` of the gradient, as a fraction of the theoretical field's pixels."""
    top, left, bottom, right = central_field_box(field, erf.shape)
    area = (bottom - top + 1) * (right - left + 1)
    ranked = np.sort(erf.ravel())[::-1]
    needed = int(np.searchsorted(np.cumsum(ranked), mass * ranked.sum()) + 1)
    return min(needed / area, 1.0)
