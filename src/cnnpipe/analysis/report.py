"""What the network sees, for people: the receptive-field table and JSON (also for `cnnpipe rf`), and the files,
metrics and tags of a run: receptive fields, their growth, the ERF."""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from cnnpipe import plots
from cnnpipe.analysis import erf, receptive_field
from cnnpipe.analysis.receptive_field import LayerField
from cnnpipe.errors import CnnpipeError


def to_json(layers: list[LayerField], input_shape: tuple[int, int, int]) -> str:
    return json.dumps({"input": list(input_shape), "layers": [asdict(layer) for layer in layers]}, indent=2)


def from_json(text: str) -> list[LayerField]:
    """The layers of a receptive_field.json that a run logged, for `cnnpipe compare`'s report."""
    return [LayerField(**layer) for layer in json.loads(text)["layers"]]


def _fmt(pair: tuple[float, float]) -> str:
    return "x".join(f"{value:g}" for value in pair)


COLUMNS = ("layer", "type", "output [C,H,W]", "rf", "jump", "start")


def rows(layers: list[LayerField]) -> list[list[str]]:
    """The cells of the receptive-field table under COLUMNS: the terminal's and the compare report's."""
    return [
        [
            layer.name,
            layer.type,
            str(list(layer.out_shape)),
            _fmt(layer.rf) + ("" if layer.aligned else " (paths not aligned)"),
            _fmt(layer.jump),
            _fmt(layer.start),
        ]
        for layer in layers
    ]


def to_table(layers: list[LayerField], title: str = "Receptive field") -> Table:
    table = Table(title=title)
    for column in COLUMNS:
        table.add_column(column)
    for row in rows(layers):
        table.add_row(*row)
    return table


@dataclass
class Description:
    files: list[Path] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


def _pictures(network: nn.Module, convs: list[str], image: torch.Tensor, folder: Path) -> list[Path]:
    """The first conv layer's learned kernels, and the feature maps each conv layer makes of `image`."""
    modules = dict(network.named_modules())
    first = modules[convs[0]].weight.detach().cpu().numpy()
    maps: dict[str, np.ndarray] = {}
    hooks = [
        modules[name].register_forward_hook(
            lambda _module, _inputs, output, name=name: maps.__setitem__(name, output[0].detach().cpu().numpy())
        )
        for name in convs
    ]
    was_training = network.training
    try:
        with torch.no_grad():
            network.eval()(image[None])
    finally:
        for hook in hooks:
            hook.remove()
        network.train(was_training)
    return [
        plots.kernel_grid(first, folder / "first_layer_kernels.png", f"Kernels of {convs[0]}"),
        plots.feature_maps(image.numpy(), maps, folder / "feature_maps.png"),
    ]


def describe(network: nn.Module, images: torch.Tensor, folder: Path) -> Description:
    """Receptive-field table (JSON and text), its growth plot and the effective receptive field of the last
    conv layer's central unit over `images` [N, C, H, W] in [0, 1]."""
    input_shape = tuple(images.shape[1:])
    result = Description()
    try:
        layers = receptive_field.receptive_fields(network, input_shape)
    except CnnpipeError as exc:  # e.g. attention layers: the run goes on, and says why nothing is shown
        result.tags["receptive_field.unavailable"] = str(exc)
        return result
    # recorded for the artifact, not shown; a layer's name is no markup
    text = Console(record=True, width=140, file=io.StringIO(), markup=False, emoji=False)
    text.print(to_table(layers, title=f"Receptive field, input {list(input_shape)}"))
    table = text.export_text()
    for name, content in (("receptive_field.json", to_json(layers, input_shape)), ("receptive_field.txt", table)):
        (folder / name).write_text(content)
        result.files.append(folder / name)
    result.files.append(plots.text_image(table, folder / "receptive_field_table.png"))
    result.files.append(
        plots.receptive_field_growth(
            [layer.name for layer in layers],
            [layer.rf for layer in layers],
            input_shape[1:],
            folder / "receptive_field_growth.png",
        )
    )
    convs = [layer for layer in layers if layer.type == "Conv2d"]
    if not convs:
        return result
    result.files += _pictures(network, [layer.name for layer in convs], images[0], folder)
    last = convs[-1]
    result.metrics["rf_final"] = min(last.rf)
    if last.rf[0] < input_shape[1] or last.rf[1] < input_shape[2]:
        result.tags["receptive_field.warning"] = (
            f"the last conv layer '{last.name}' sees {last.rf[0]}x{last.rf[1]} pixels of the "
            f"{input_shape[1]}x{input_shape[2]} input: the network never sees the whole image"
        )
    heat = erf.effective_receptive_field(network, last.name, images)
    fraction = erf.mass_fraction(heat, last)
    result.metrics["erf_fraction"] = fraction
    box = erf.central_field_box(last, heat.shape)
    result.files.append(
        plots.erf_heatmap(
            heat, box, fraction, f"Effective receptive field of {last.name}", folder / "effective_receptive_field.png"
        )
    )
    return result
