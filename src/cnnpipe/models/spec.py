"""The declared layers (cnnpipe.layers), named and shape-checked before any torch code runs.

Input channels and features always come from the previous layer; an explicit `in:` that disagrees is an
error naming the layer, as is a layer whose output would be empty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cnnpipe.errors import CnnpipeError
from cnnpipe.layers import Conv, Dense, Flatten, GlobalAvgPool, Layer, Pool, Shape


@dataclass(frozen=True)
class PlannedLayer:
    """One layer with its module name and the shapes it maps between."""

    name: str
    spec: Layer | None  # None for the automatic flatten before the head and the head itself
    kind: str
    in_shape: Shape
    out_shape: Shape


def head_outputs(num_classes: int) -> int:
    """Two classes need one logit (sigmoid + binary cross-entropy); N > 2 classes need N (softmax)."""
    if num_classes < 2:
        raise CnnpipeError(f"data: {num_classes} class(es) found; a classifier needs at least 2")
    return 1 if num_classes == 2 else num_classes


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _window_out(size: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> int:
    return math.floor((size + 2 * padding - dilation * (kernel - 1) - 1) / stride) + 1


def conv_padding(spec: Conv) -> tuple[int, int]:
    """Resolves `padding: same` (stride 1 only, as in torch) to explicit numbers."""
    if spec.padding != "same":
        return _pair(spec.padding)
    kernel, dilation = _pair(spec.kernel), _pair(spec.dilation)
    return tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation, strict=True))


def _window_shape(name: str, spec: Conv | Pool, shape: Shape) -> Shape:
    channels, height, width = shape
    kernel, stride = _pair(spec.kernel), _pair(spec.stride or spec.kernel)
    dilation = _pair(spec.dilation) if isinstance(spec, Conv) else (1, 1)
    padding = conv_padding(spec) if isinstance(spec, Conv) else _pair(spec.padding)
    if isinstance(spec, Pool) and any(p > k // 2 for p, k in zip(padding, kernel, strict=True)):
        raise CnnpipeError(f"model.layers: layer '{name}': padding {padding} must be at most half the kernel {kernel}")
    axes = zip((height, width), kernel, stride, padding, dilation, strict=True)
    out = [_window_out(n, k, s, p, d) for n, k, s, p, d in axes]
    out_channels = spec.out if isinstance(spec, Conv) else channels
    if min(out) < 1:
        raise CnnpipeError(
            f"model.layers: layer '{name}' ({spec.type}, kernel {kernel}, stride {stride}, padding {padding}) "
            f"turns its input [{channels}, {height}, {width}] into an empty output "
            f"[{out_channels}, {out[0]}, {out[1]}]; "
            "use a smaller kernel or stride, add padding, or remove a down-sampling layer before it"
        )
    return (out_channels, *out)


def _layer_out_shape(name: str, spec: Layer, shape: Shape) -> Shape:
    feature_map = len(shape) == 3
    if isinstance(spec, Conv | Pool | GlobalAvgPool) and not feature_map:
        raise CnnpipeError(
            f"model.layers: layer '{name}' ({spec.type}) needs a [C, H, W] feature map but gets {list(shape)} "
            "after a flatten; move it before the flatten layer"
        )
    if isinstance(spec, Conv):
        if spec.in_channels is not None and spec.in_channels != shape[0]:
            raise CnnpipeError(
                f"model.layers: layer '{name}' declares in: {spec.in_channels} but the previous layer gives "
                f"{shape[0]} channels; remove 'in' or set it to {shape[0]}"
            )
        if shape[0] % spec.groups or spec.out % spec.groups:
            raise CnnpipeError(
                f"model.layers: layer '{name}': groups={spec.groups} must divide in channels {shape[0]} "
                f"and out channels {spec.out}"
            )
        if spec.padding == "same" and _pair(spec.stride) != (1, 1):
            raise CnnpipeError(f"model.layers: layer '{name}': padding 'same' needs stride 1")
        return _window_shape(name, spec, shape)
    if isinstance(spec, Pool):
        return _window_shape(name, spec, shape)
    if isinstance(spec, GlobalAvgPool):
        return (shape[0], 1, 1)
    if isinstance(spec, Flatten):
        return (math.prod(shape),)
    if isinstance(spec, Dense):
        if feature_map:
            raise CnnpipeError(
                f"model.layers: layer '{name}' (dense) gets a {list(shape)} feature map; "
                "add a {type: flatten} layer before it"
            )
        if spec.in_features is not None and spec.in_features != shape[0]:
            raise CnnpipeError(
                f"model.layers: layer '{name}' declares in: {spec.in_features} but the previous layer gives "
                f"{shape[0]} features; remove 'in' or set it to {shape[0]}"
            )
        return (spec.out,)
    return shape  # batch norm, activations and dropout keep the shape


def plan_layers(layers: list[Layer], input_shape: Shape, num_classes: int) -> list[PlannedLayer]:
    """Names every layer (conv1, relu1, maxpool1, ...), infers each [C, H, W] and appends the head."""
    counters: dict[str, int] = {}
    plan: list[PlannedLayer] = []
    shape = tuple(input_shape)
    for spec in layers:
        counters[spec.type] = counters.get(spec.type, 0) + 1
        name = f"{spec.type}{counters[spec.type]}"
        out_shape = _layer_out_shape(name, spec, shape)
        plan.append(PlannedLayer(name, spec, spec.type, shape, out_shape))
        shape = out_shape
    if len(shape) == 3:
        flat = (math.prod(shape),)
        plan.append(PlannedLayer("flatten_head", None, "flatten", shape, flat))
        shape = flat
    plan.append(PlannedLayer("head", None, "dense", shape, (head_outputs(num_classes),)))
    return plan
