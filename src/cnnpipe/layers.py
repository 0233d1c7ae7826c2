"""The layers a CNN is declared with in params.yaml (`model.layers`), and the ready-made layer lists (`model.preset`).

This is the schema the config parses into: plain data, no torch. models/ builds networks from it and plans
their shapes; config validates params.yaml against it. Each layer is one of the lecture's parts (conv, pooling,
batch norm, activation, dropout, flatten, dense).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt

Pair = PositiveInt | tuple[PositiveInt, PositiveInt]
NonNegativePair = NonNegativeInt | tuple[NonNegativeInt, NonNegativeInt]
Shape = tuple[int, ...]  # [C, H, W] for feature maps, [F] after flatten


class Layer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Conv(Layer):
    """A 2-D convolution: `out` learned kernels (the layer's width) give `out` feature maps."""

    type: Literal["conv"]
    out: PositiveInt
    kernel: Pair = 3
    stride: Pair = 1
    padding: NonNegativePair | Literal["same"] = 0
    dilation: Pair = 1
    groups: PositiveInt = 1
    bias: bool = True
    in_channels: PositiveInt | None = Field(None, alias="in")


class Pool(Layer):
    """Max- or average-pooling: down-samples H and W, keeps C. The stride defaults to the kernel size."""

    type: Literal["maxpool", "avgpool"]
    kernel: Pair = 2
    stride: Pair | None = None
    padding: NonNegativePair = 0


class GlobalAvgPool(Layer):
    """Averages each feature map to a single value: [C, H, W] -> [C, 1, 1]."""

    type: Literal["global_avgpool"]


class BatchNorm(Layer):
    type: Literal["batchnorm"]


ACTIVATIONS = ("relu", "leaky_relu", "gelu", "silu", "elu", "tanh", "sigmoid")


class Activation(Layer):
    """A non-linearity applied element-wise; ReLU, max(0, z), is the lecture's default."""

    type: Literal[ACTIVATIONS]


class Dropout(Layer):
    type: Literal["dropout"]
    p: float = Field(0.5, ge=0, lt=1)


class Flatten(Layer):
    """Turns [C, H, W] feature maps into a 1-D vector of C*H*W features for the dense layers."""

    type: Literal["flatten"]


class Dense(Layer):
    """A fully-connected layer; the output head (logits) is appended automatically, see `head_outputs`."""

    type: Literal["dense"]
    out: PositiveInt
    bias: bool = True
    in_features: PositiveInt | None = Field(None, alias="in")


LayerSpec = Annotated[
    Conv | Pool | GlobalAvgPool | BatchNorm | Activation | Dropout | Flatten | Dense,
    Field(discriminator="type"),
]
TORCHVISION_PREFIX = "torchvision:"
LAYER_TYPES = ("conv", "maxpool", "avgpool", "global_avgpool", "batchnorm", *ACTIVATIONS, "dropout", "flatten", "dense")

LAYER_PRESETS: dict[str, list[dict]] = {
    # The lecture: conv -> ReLU -> max-pool, twice, then flatten and a dense layer.
    "lecture": [
        {"type": "conv", "out": 16, "kernel": 3, "padding": 1},
        {"type": "relu"},
        {"type": "maxpool", "kernel": 2},
        {"type": "conv", "out": 32, "kernel": 3, "padding": 1},
        {"type": "relu"},
        {"type": "maxpool", "kernel": 2},
        {"type": "flatten"},
        {"type": "dense", "out": 64},
        {"type": "relu"},
    ],
    # LeNet-5 (LeCun et al., 1998) for 28x28 input: the first conv pads by 2 as the original's 32x32 input did.
    "lenet5": [
        {"type": "conv", "out": 6, "kernel": 5, "padding": 2},
        {"type": "tanh"},
        {"type": "avgpool", "kernel": 2},
        {"type": "conv", "out": 16, "kernel": 5},
        {"type": "tanh"},
        {"type": "avgpool", "kernel": 2},
        {"type": "flatten"},
        {"type": "dense", "out": 120},
        {"type": "tanh"},
        {"type": "dense", "out": 84},
        {"type": "tanh"},
    ],
    # Two VGG blocks: two 3x3 convs (same padding) before each 2x2 max-pool, width doubling with depth.
    "vgg-small": [
        *[
            {"type": kind, **args}
            for width in (32, 64)
            for kind, args in (
                ("conv", {"out": width, "kernel": 3, "padding": 1}),
                ("batchnorm", {}),
                ("relu", {}),
                ("conv", {"out": width, "kernel": 3, "padding": 1}),
                ("batchnorm", {}),
                ("relu", {}),
                ("maxpool", {"kernel": 2}),
            )
        ],
        {"type": "global_avgpool"},
        {"type": "flatten"},
        {"type": "dropout", "p": 0.3},
    ],
}
MODULE_PRESETS = ("resnet-small",)  # residual branches, which a layer list cannot express: modules in models.presets
PRESETS = (*LAYER_PRESETS, *MODULE_PRESETS)

# The lecture's hand-made 3x3 kernels: `model.fixed_first_layer` starts conv1 from them, `cnnpipe kernels` applies
# them to an image (analysis.kernels).
KERNELS: dict[str, list[list[float]]] = {
    "vertical_edge": [[1, 0, -1], [1, 0, -1], [1, 0, -1]],
    "horizontal_edge": [[1, 1, 1], [0, 0, 0], [-1, -1, -1]],
    "sobel_x": [[1, 0, -1], [2, 0, -2], [1, 0, -1]],
    "sobel_y": [[1, 2, 1], [0, 0, 0], [-1, -2, -1]],
    "laplacian": [[0, -1, 0], [-1, 4, -1], [0, -1, 0]],
    "box_blur": [[1 / 9] * 3] * 3,
    "sharpen": [[0, -1, 0], [-1, 5, -1], [0, -1, 0]],
    "emboss": [[-2, -1, 0], [-1, 1, 1], [0, 1, 2]],
    "lecture_x": [[1, 0, 1], [0, 1, 0], [1, 0, 1]],  # the lecture's worked example
}
