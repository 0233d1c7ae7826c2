"""Ready networks, chosen with `model.preset`: the lecture's CNN, LeNet-5, a small VGG, a small ResNet, or any
torchvision classifier adapted to the data's channels and classes.

The layer-list presets are data, in cnnpipe.layers beside the layer schema; the residual ones need branches,
which a list of layers cannot express, so they are modules, built here.
"""

from __future__ import annotations

from torch import nn

from cnnpipe.config import widened
from cnnpipe.errors import CnnpipeError
from cnnpipe.layers import MODULE_PRESETS, TORCHVISION_PREFIX


class ResidualBlock(nn.Module):
    """Two 3x3 convs with batch norm, added to a shortcut (a strided 1x1 conv where the shape changes)."""

    def __init__(self, channels: int, out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out)
        self.conv2 = nn.Conv2d(out, out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU()
        self.shortcut = nn.Identity()
        if stride != 1 or channels != out:
            self.shortcut = nn.Sequential(nn.Conv2d(channels, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + self.shortcut(x))


def resnet_small(in_channels: int, outputs: int, width: float = 1.0) -> nn.Module:
    """A CIFAR-style ResNet: a 3x3 stem, three stages of two residual blocks (16, 32, 64 kernels, each times
    `width`: a wide ResNet, widened as Zagoruyko and Komodakis widen theirs, at the same depth)."""
    stem, wider, widest = (widened(kernels, width) for kernels in (16, 32, 64))
    layers: list[nn.Module] = [nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU()]
    channels = stem
    for out, stride in ((stem, 1), (wider, 2), (widest, 2)):
        layers += [ResidualBlock(channels, out, stride), ResidualBlock(out, out, 1)]
        channels = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, outputs)]
    return nn.Sequential(*layers)


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                if child.in_channels != in_channels:
                    setattr(
                        parent,
                        name,
                        nn.Conv2d(
                            in_channels,
                            child.out_channels,
                            child.kernel_size,
                            child.stride,
                            child.padding,
                            child.dilation,
                            child.groups if child.groups == 1 else in_channels,
                            child.bias is not None,
                        ),
                    )
                return


def torchvision_classifier(name: str, in_channels: int, outputs: int) -> nn.Module:
    """An untrained torchvision classifier with its first conv taking `in_channels` and `outputs` logits."""
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        raise CnnpipeError(f"model.preset: unknown torchvision classifier {name!r}; valid: {', '.join(names)}")
    extra = {"aux_logits": False, "init_weights": True} if name in ("inception_v3", "googlenet") else {}
    model = torchvision.models.get_model(name, weights=None, num_classes=outputs, **extra)
    _replace_first_conv(model, in_channels)
    return model


def preset_module(name: str, in_channels: int, outputs: int, width: float = 1.0) -> nn.Module:
    if name in MODULES:
        return MODULES[name](in_channels, outputs, width)
    return torchvision_classifier(name.removeprefix(TORCHVISION_PREFIX), in_channels, outputs)


MODULES = dict(zip(MODULE_PRESETS, (resnet_small,), strict=True))  # a name in layers.py without a builder fails here
