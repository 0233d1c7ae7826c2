"""Receptive field of every layer: which input pixels can influence one unit of its output.

For a window layer (conv, pool) with kernel k, stride s, padding p and dilation d, in each of H and W:
    k' = d (k - 1) + 1,  rf_out = rf_in + (k' - 1) jump_in,  jump_out = jump_in s,
    start_out = start_in + ((k' - 1) / 2 - p) jump_in
`start` is the centre of the first output unit in input pixel coordinates (the first pixel's centre is 0).
A global layer (adaptive pooling to 1, flatten) acts as one window over the whole [H', W'] map. Layers that
act on each value alone (batch norm, activations, dropout, normalisation) keep the field.

This version walks a sequential network in execution order, which is exact for a chain of layers.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
from rich.table import Table
from torch import nn

from cnnpipe.errors import CnnpipeError
from cnnpipe.models.network import Normalize

Pair = tuple[float, float]

_POINTWISE = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.ReLU,
    nn.LeakyReLU,
    nn.GELU,
    nn.SiLU,
    nn.ELU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
    Normalize,  # cnnpipe's per-channel standardisation
)


@dataclass(frozen=True)
class LayerField:
    name: str
    type: str
    out_shape: tuple[int, ...]
    rf: Pair
    jump: Pair
    start: Pair


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _window(field: tuple[Pair, Pair, Pair], kernel, stride, padding, dilation=1) -> tuple[Pair, Pair, Pair]:
    rf, jump, start = field
    out = [], [], []
    axes = zip(_pair(kernel), _pair(stride), _pair(padding), _pair(dilation), strict=True)
    for axis, (k, s, p, d) in enumerate(axes):
        span = d * (k - 1)
        out[0].append(rf[axis] + span * jump[axis])
        out[1].append(jump[axis] * s)
        out[2].append(start[axis] + (span / 2 - p) * jump[axis])
    return tuple(map(tuple, out))


def _next_field(module: nn.Module, field, in_shape: tuple[int, ...]):
    if isinstance(module, (*_POINTWISE, nn.Linear)) or len(in_shape) < 3:
        return field
    if isinstance(module, nn.Conv2d):
        if isinstance(module.padding, str):
            raise CnnpipeError(f"receptive field: layer padding '{module.padding}' is not supported; use numbers")
        return _window(field, module.kernel_size, module.stride, module.padding, module.dilation)
    if isinstance(module, nn.MaxPool2d | nn.AvgPool2d):
        dilation = getattr(module, "dilation", 1)
        return _window(field, module.kernel_size, module.stride, module.padding, dilation)
    if isinstance(module, nn.Flatten) or (
        isinstance(module, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d) and _pair(module.output_size) == (1, 1)
    ):
        return _window(field, in_shape[-2:], in_shape[-2:], 0)
    raise CnnpipeError(
        f"receptive field: module type {type(module).__name__} is not supported; "
        "supported: Conv2d, MaxPool2d, AvgPool2d, global adaptive pooling, Flatten, Linear and element-wise layers"
    )


def receptive_fields(network: nn.Sequential, input_shape: tuple[int, int, int]) -> list[LayerField]:
    """The receptive field after each layer of a sequential network, for one [C, H, W] input."""
    field: tuple[Pair, Pair, Pair] = ((1, 1), (1, 1), (0.0, 0.0))
    shape = tuple(input_shape)
    layers = []
    with torch.no_grad():
        x = torch.zeros(1, *input_shape)
        for name, module in network.named_children():
            was_training = module.training
            module.eval()  # batch norm on a single zero image must not touch running statistics
            y = module(x)
            module.train(was_training)
            field = _next_field(module, field, shape)
            shape = tuple(y.shape[1:])
            layers.append(LayerField(name, type(module).__name__, shape, *field))
            x = y
    return layers


def to_json(layers: list[LayerField], input_shape: tuple[int, int, int]) -> str:
    return json.dumps({"input": list(input_shape), "layers": [asdict(layer) for layer in layers]}, indent=2)


def to_table(layers: list[LayerField], title: str = "Receptive field") -> Table:
    table = Table(title=title)
    for column in ("layer", "type", "output [C,H,W]", "rf", "jump", "start"):
        table.add_column(column)

    def fmt(pair: Pair) -> str:
        return "x".join(f"{value:g}" for value in pair)

    for layer in layers:
        table.add_row(
            layer.name, layer.type, str(list(layer.out_shape)), fmt(layer.rf), fmt(layer.jump), fmt(layer.start)
        )
    return table
