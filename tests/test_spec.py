"""The layer spec: names, [C, H, W] shapes and the errors a person designing a network meets."""

import itertools

import pytest
import torch
from torch import nn

from cnnpipe.config import ModelConfig
from cnnpipe.errors import CnnpipeError
from cnnpipe.models.network import build_network, forward_flops
from cnnpipe.models.spec import head_outputs, plan_layers


def plan(layers, shape=(1, 28, 28), classes=10):
    return plan_layers(ModelConfig.model_validate({"layers": layers}).layers, shape, classes)


def test_default_like_network_shapes_and_names():
    layers = [
        {"type": "conv", "out": 32, "kernel": 3, "padding": 1},
        {"type": "relu"},
        {"type": "maxpool", "kernel": 2},
        {"type": "conv", "out": 64, "kernel": 3, "padding": 1},
        {"type": "relu"},
        {"type": "maxpool"},
        {"type": "flatten"},
        {"type": "dense", "out": 128},
    ]
    planned = plan(layers)
    assert [layer.name for layer in planned] == [
        "conv1",
        "relu1",
        "maxpool1",
        "conv2",
        "relu2",
        "maxpool2",
        "flatten1",
        "dense1",
        "head",
    ]
    assert [layer.out_shape for layer in planned] == [
        (32, 28, 28),
        (32, 28, 28),
        (32, 14, 14),
        (64, 14, 14),
        (64, 14, 14),
        (64, 7, 7),
        (3136,),
        (128,),
        (10,),
    ]


def test_head_follows_the_task():
    assert head_outputs(2) == 1  # sigmoid + binary cross-entropy
    assert head_outputs(10) == 10  # softmax cross-entropy
    with pytest.raises(CnnpipeError, match="at least 2"):
        head_outputs(1)
    planned = plan([{"type": "conv", "out": 4, "kernel": 3}], classes=2)
    assert [layer.name for layer in planned[-2:]] == ["flatten_head", "head"]
    assert planned[-1].out_shape == (1,)


def test_empty_output_is_rejected_naming_the_layer():
    layers = [{"type": "conv", "out": 8, "kernel": 5, "stride": 2}] * 3
    with pytest.raises(CnnpipeError, match=r"layer 'conv3' \(conv, kernel \(5, 5\), stride \(2, 2\).*empty output"):
        plan(layers)
    with pytest.raises(CnnpipeError, match="layer 'maxpool2'"):
        plan([{"type": "maxpool", "kernel": 4}, {"type": "maxpool", "kernel": 8}])


def test_explicit_input_mismatch_names_the_layer():
    layers = [{"type": "conv", "out": 8}, {"type": "conv", "out": 16, "in": 4}]
    with pytest.raises(CnnpipeError, match=r"layer 'conv2' declares in: 4 but the previous layer gives 8 channels"):
        plan(layers)
    with pytest.raises(CnnpipeError, match="declares in: 3 but the previous layer gives 1 channels"):
        plan([{"type": "conv", "out": 8, "in": 3}])
    assert plan([{"type": "conv", "out": 8, "in": 1}])[0].out_shape == (8, 26, 26)


def test_dense_needs_flatten_and_conv_needs_a_feature_map():
    with pytest.raises(CnnpipeError, match=r"'dense1' \(dense\) gets a \[4, 26, 26\] feature map; add a"):
        plan([{"type": "conv", "out": 4}, {"type": "dense", "out": 10}])
    with pytest.raises(CnnpipeError, match=r"'conv1' \(conv\) needs a \[C, H, W\] feature map"):
        plan([{"type": "flatten"}, {"type": "conv", "out": 4}])


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "dilation", "pool"),
    list(itertools.product([1, 3, 5], [1, 2], [0, 1, 2], [1, 2], ["maxpool", "avgpool"])),
)
def test_built_network_matches_the_planned_shapes(kernel, stride, padding, dilation, pool):
    layers = [
        {"type": "conv", "out": 6, "kernel": kernel, "stride": stride, "padding": padding, "dilation": dilation},
        {"type": "batchnorm"},
        {"type": "gelu"},
        {"type": pool, "kernel": 2},
        {"type": "conv", "out": 4, "kernel": [3, 1], "padding": "same"},
        {"type": "flatten"},
        {"type": "dense", "out": 7},
        {"type": "batchnorm"},
        {"type": "dropout", "p": 0.1},
    ]
    planned = plan(layers, shape=(3, 21, 17), classes=5)
    network = build_network(planned, mean=[0.5] * 3, std=[0.25] * 3).eval()
    x = torch.rand(2, 3, 21, 17)
    for name, module in list(network.named_children())[1:]:
        x = module(x)
        expected = next(layer.out_shape for layer in planned if layer.name == name)
        assert tuple(x.shape[1:]) == expected, name


def test_forward_flops_count_a_multiply_add_as_two_and_leave_batch_norm_alone():
    network = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.Flatten(), nn.Linear(16 * 28 * 28, 10)
    )
    before = network[1].running_mean.clone()
    assert forward_flops(network, (1, 28, 28)) == 2 * 16 * 9 * 28 * 28 + 2 * 16 * 28 * 28 * 10
    assert torch.equal(network[1].running_mean, before) and network.training
