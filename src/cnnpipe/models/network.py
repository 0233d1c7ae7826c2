"""Builds the torch network from the planned layers, and prints the [C, H, W] shape table."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import partial

import psutil
import torch
from rich.table import Table
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cnnpipe.config import ModelConfig
from cnnpipe.errors import CnnpipeError
from cnnpipe.layers import (
    KERNELS,
    LAYER_PRESETS,
    Activation,
    BatchNorm,
    Conv,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool,
    Pool,
    Shape,
)
from cnnpipe.models import presets
from cnnpipe.models.own_network import own_network
from cnnpipe.models.spec import PlannedLayer, conv_padding, head_outputs, plan_layers

BYTES_PER_PARAMETER = 16  # training holds float32 weights, their gradients and AdamW's two moments
_ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


class Normalize(nn.Module):
    """Standardises [0, 1] images per channel inside the network, so the logged model takes plain images."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _module(layer: PlannedLayer) -> nn.Module:
    spec, in_shape, out_shape = layer.spec, layer.in_shape, layer.out_shape
    if spec is None:  # the automatic flatten and head
        return nn.Flatten() if layer.kind == "flatten" else nn.Linear(in_shape[0], out_shape[0])
    if isinstance(spec, Conv):
        return nn.Conv2d(
            in_shape[0], spec.out, spec.kernel, spec.stride, conv_padding(spec), spec.dilation, spec.groups, spec.bias
        )
    if isinstance(spec, Pool):
        pool = nn.MaxPool2d if spec.type == "maxpool" else nn.AvgPool2d
        return pool(spec.kernel, spec.stride or spec.kernel, spec.padding)
    if isinstance(spec, GlobalAvgPool):
        return nn.AdaptiveAvgPool2d(1)
    if isinstance(spec, BatchNorm):
        return nn.BatchNorm2d(in_shape[0]) if len(in_shape) == 3 else nn.BatchNorm1d(in_shape[0])
    if isinstance(spec, Activation):
        return _ACTIVATIONS[spec.type]()
    if isinstance(spec, Dropout):
        return nn.Dropout(spec.p)
    if isinstance(spec, Flatten):
        return nn.Flatten()
    if isinstance(spec, Dense):
        return nn.Linear(in_shape[0], spec.out, spec.bias)
    raise TypeError(f"no module for layer type {spec.type}")  # unreachable: the spec union is closed


def build_network(plan: list[PlannedLayer], mean: Sequence[float], std: Sequence[float]) -> nn.Sequential:
    """One nn.Sequential whose module names (normalize, conv1, relu1, ..., head) match the shape table."""
    modules = OrderedDict([("normalize", Normalize(mean, std))])
    modules.update((layer.name, _module(layer)) for layer in plan)
    return nn.Sequential(modules)


def build_model_network(
    config: ModelConfig, input_shape: Shape, num_classes: int, mean: Sequence[float], std: Sequence[float]
) -> tuple[list[PlannedLayer] | None, nn.Sequential]:
    """The network of `model.layers`, `model.preset` or `model.class`, with its shape plan where it has one (a
    layer list, or the top-level modules of the user's own class)."""
    if config.class_ is not None:
        plan, modules = own_network(config, input_shape, head_outputs(num_classes))
        network = nn.Sequential(OrderedDict([("normalize", Normalize(mean, std)), *modules.items()]))
        return plan, _fix_first_conv(network, config.fixed_first_layer)
    if config.preset is None or config.preset in LAYER_PRESETS:
        layers = config.layers
        if config.preset is not None:
            layers = ModelConfig(layers=LAYER_PRESETS[config.preset]).layers
        plan = plan_layers(config.scaled_layers(layers), input_shape, num_classes)
        key = "model.width" if config.width != 1 else "model.layers"
        _check_fits(key, _layer_parameters(key, plan))
        return plan, _fix_first_conv(build_network(plan, mean, std), config.fixed_first_layer)
    build = partial(presets.preset_module, config.preset, input_shape[0], head_outputs(num_classes), config.width)
    if config.width != 1:  # resnet-small's; torchvision's networks have their own size (and some fail on meta)
        _check_fits("model.width", {config.preset: _parameters_on_meta("model.width", config.preset, build)})
    body = build()
    network = nn.Sequential(OrderedDict([("normalize", Normalize(mean, std)), ("body", body)]))
    try:  # a dry run: torchvision's deeper networks pool small images down to nothing
        with torch.no_grad():
            network.eval()(torch.zeros(2, *input_shape))
    except RuntimeError as exc:
        reason = " ".join(str(exc).split())[:160]
        raise CnnpipeError(
            f"model.preset: {config.preset} cannot take a {list(input_shape)} input ({reason}); "
            "set data.image_size larger or pick a smaller network"
        ) from None
    return None, _fix_first_conv(network.train(), config.fixed_first_layer)


def _parameters_on_meta(key: str, what: str, build: Callable[[], nn.Module]) -> int:
    """The parameters of the module `build` makes, built on torch's meta device: shapes without memory."""
    try:
        with torch.device("meta"):
            return sum(parameter.numel() for parameter in build().parameters())
    except (RuntimeError, TypeError, OverflowError) as exc:  # a size beyond a 64-bit integer, or its storage
        raise CnnpipeError(f"{key}: {what} is more than torch can build ({' '.join(str(exc).split())[:120]})") from None


def _layer_parameters(key: str, plan: list[PlannedLayer]) -> dict[str, int]:
    """Each planned layer's parameters, by the name the shape table gives it."""
    return {
        layer.name: _parameters_on_meta(
            key, f"layer '{layer.name}' ({layer.kind}, output {list(layer.out_shape)})", partial(_module, layer)
        )
        for layer in plan
    }


def _check_fits(key: str, parameters: dict[str, int]) -> None:
    """A network whose training cannot fit in this machine's memory is refused before any weight is allocated:
    torch would fail inside the allocator, or the kernel kill the process, after the run opened."""
    total = sum(parameters.values())
    available = psutil.virtual_memory().available
    if total * BYTES_PER_PARAMETER > available:
        largest = max(parameters, key=parameters.get)
        raise CnnpipeError(
            f"{key}: the network would have {total:,} parameters (the most in {largest}: {parameters[largest]:,}), "
            f"{total * BYTES_PER_PARAMETER / 1e9:,.1f} GB to train ({BYTES_PER_PARAMETER} bytes each: float32 "
            f"weights, gradients and AdamW's two moments), more than the {available / 1e9:,.1f} GB of memory "
            f"available; lower {key}"
        )


def _fix_first_conv(network: nn.Sequential, names: list[str]) -> nn.Sequential:
    """Starts the first conv layer from the lecture's hand-made kernels and freezes it, so hand-crafted
    against learned features is one `dvc exp run -S model.fixed_first_layer=[...]`."""
    if not names:
        return network
    for index, name in enumerate(names):
        if name not in KERNELS:
            raise CnnpipeError(
                f"model.fixed_first_layer[{index}]: unknown kernel {name!r}; valid: {', '.join(KERNELS)}"
            )
    conv = next((module for module in network.modules() if isinstance(module, nn.Conv2d)), None)
    if conv is None:
        raise CnnpipeError("model.fixed_first_layer: the network has no conv layer to start from the kernels")
    if conv.out_channels != len(names) or conv.kernel_size != (3, 3):
        raise CnnpipeError(
            f"model.fixed_first_layer: {len(names)} kernel(s) of 3x3 need a first conv layer with out: {len(names)} "
            f"and kernel: 3, not out: {conv.out_channels}, kernel: {list(conv.kernel_size)}"
        )
    with torch.no_grad():
        for index, name in enumerate(names):  # an RGB image gets the kernel on each channel, averaged
            conv.weight[index] = torch.tensor(KERNELS[name]) / conv.in_channels
        if conv.bias is not None:
            conv.bias.zero_()
    conv.requires_grad_(False)
    return network


def shape_table(plan: list[PlannedLayer], title: str = "Layer shapes") -> Table:
    table = Table(title=title)
    for column in ("layer", "type", "input", "output"):
        table.add_column(column)
    for layer in plan:
        table.add_row(layer.name, layer.kind, str(list(layer.in_shape)), str(list(layer.out_shape)))
    return table


def widths(network: nn.Module) -> list[int]:
    """The widths actually built, in order: each conv's feature maps and each dense layer's units, head included
    (model.width scales the configured ones; a preset has its own)."""
    return [
        module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
        for module in network.modules()
        if isinstance(module, nn.Conv2d | nn.Linear)
    ]


def forward_flops(network: nn.Module, input_shape: Shape) -> int:
    """The FLOPs of one image's forward pass (a multiply-add counts 2), as torch's FlopCounterMode counts them;
    training costs about 3x that (forward, and backward to the inputs and to the weights)."""
    training = network.training
    network.eval()  # batch norm must not learn from the zeros
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            network(torch.zeros(1, *input_shape))
    finally:
        network.train(training)
    return counter.get_total_flops()
