"""The networks `cnnpipe rf` can describe: the model of params.yaml, or any torchvision classifier, untrained."""

from __future__ import annotations

from torch import nn

from cnnpipe.config import Params
from cnnpipe.errors import CnnpipeError
from cnnpipe.models.network import build_network
from cnnpipe.models.spec import plan_layers

TORCHVISION_PREFIX = "torchvision:"


def torchvision_model(name: str) -> tuple[nn.Module, tuple[int, int, int]]:
    """An untrained torchvision classifier and the input shape it was designed for."""
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        raise CnnpipeError(f"model: unknown torchvision classifier {name!r}; valid: {', '.join(names)}")
    size = 299 if name == "inception_v3" else 224
    return torchvision.models.get_model(name, weights=None), (3, size, size)


def params_model(params: Params, input_shape: tuple[int, int, int], classes: int) -> nn.Module:
    plan = plan_layers(params.model.layers, input_shape, classes)
    return build_network(plan, mean=[0.0] * input_shape[0], std=[1.0] * input_shape[0])
