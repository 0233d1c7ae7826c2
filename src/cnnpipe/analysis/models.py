"""The networks `cnnpipe rf` describes: `params` (the model of params.yaml), a preset, or torchvision:NAME."""

from __future__ import annotations

from torch import nn

from cnnpipe.config import ModelConfig, Params
from cnnpipe.errors import CnnpipeError
from cnnpipe.layers import PRESETS, TORCHVISION_PREFIX
from cnnpipe.models.network import build_model_network

Shape = tuple[int, int, int]


def default_shape(model: str) -> Shape:
    """The input a named network was designed for: ImageNet's for torchvision, Fashion-MNIST's for presets."""
    if model.startswith(TORCHVISION_PREFIX):
        return (3, 299, 299) if model.endswith("inception_v3") else (3, 224, 224)
    return (1, 28, 28)


def network(model: str, params: Params | None, shape: Shape, classes: int) -> nn.Module:
    """Untrained; the normalisation is the identity, which does not change any field."""
    if model == "params":
        config = params.model
    elif model in PRESETS or model.startswith(TORCHVISION_PREFIX):
        config = ModelConfig(preset=model)
    else:
        raise CnnpipeError(
            f"MODEL: {model!r} is not 'params', a preset ({', '.join(PRESETS)}) or {TORCHVISION_PREFIX}NAME"
        )
    return build_model_network(config, shape, classes, [0.0] * shape[0], [1.0] * shape[0])[1]
