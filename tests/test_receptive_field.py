"""The receptive-field table against a brute-force measure: the input pixels with a non-zero gradient."""

import random

import pytest
import torch
from torch import nn

from cnnpipe.analysis.receptive_field import receptive_fields
from cnnpipe.analysis.report import to_json


def gradient_twin(network: nn.Sequential) -> nn.Sequential:
    """The same geometry with nothing that hides an influence: max-pool (gradient to the argmax only) becomes
    average pooling, and conv weights are positive so no two paths cancel."""
    twin = []
    for module in network:
        if isinstance(module, nn.MaxPool2d):
            module = nn.AvgPool2d(module.kernel_size, module.stride, module.padding)
        twin.append(module)
    twin = nn.Sequential(*twin).double()
    for module in twin.modules():
        if isinstance(module, nn.Conv2d):  # positive weights and biases on positive inputs: ReLU passes all
            nn.init.uniform_(module.weight, 0.1, 1.0)
            nn.init.uniform_(module.bias, 0.1, 1.0)
    return twin


def brute_force(twin: nn.Sequential, upto: int, shape: tuple[int, int, int], unit: tuple[int, int]):
    """Rows and columns of input pixels that influence one output unit of layer `upto`, in float64."""
    x = torch.rand(1, *shape, dtype=torch.float64, requires_grad=True)
    y = twin[: upto + 1](x)
    y[0, 0, unit[0], unit[1]].backward()
    influence = x.grad[0].abs().sum(dim=0) > 0
    rows = influence.any(dim=1).nonzero().flatten()
    cols = influence.any(dim=0).nonzero().flatten()
    return rows, cols


def random_chain(rng: random.Random) -> nn.Sequential:
    layers, channels = [], 2
    for _ in range(rng.randint(1, 4)):
        if rng.random() < 0.6:
            kernel, dilation = rng.choice([1, 2, 3, 5]), rng.choice([1, 1, 2])
            out = rng.randint(2, 4)
            layers.append(nn.Conv2d(channels, out, kernel, rng.choice([1, 2]), rng.randint(0, kernel // 2), dilation))
            channels = out
        else:
            pool = rng.choice([nn.MaxPool2d, nn.AvgPool2d])
            layers.append(pool(rng.choice([2, 3]), rng.choice([1, 2])))
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


@pytest.mark.parametrize("seed", range(25))
def test_table_matches_the_gradient_footprint(seed):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    network = random_chain(rng)
    shape = (2, 48, 40)
    fields = receptive_fields(network, shape)
    twin = gradient_twin(network)
    checked = 0
    for index, field in enumerate(fields):
        # Unit i is centred on start + i * jump and spans rf pixels. Pick a unit whose field lies inside the
        # image: at the border, taps on the zero padding would hide where the field begins.
        unit, bounds = [], []
        for axis in (0, 1):
            half = (field.rf[axis] - 1) / 2
            inside = [
                i
                for i in range(field.out_shape[1 + axis])
                if field.start[axis] + i * field.jump[axis] - half >= 0
                and field.start[axis] + i * field.jump[axis] + half <= shape[1 + axis] - 1
            ]
            if not inside:
                break
            centre = field.start[axis] + inside[0] * field.jump[axis]
            unit.append(inside[0])
            bounds.append((centre - half, centre + half))
        if len(unit) < 2:
            continue
        rows, cols = brute_force(twin, index, shape, tuple(unit))
        for pixels, (low, high) in zip((rows, cols), bounds, strict=True):
            assert (pixels.min().item(), pixels.max().item()) == (low, high), (seed, index, field)
        checked += 1
    assert checked


def test_flatten_sees_the_whole_input_and_json_has_the_documented_keys():
    network = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 26 * 26, 3))
    fields = receptive_fields(network, (1, 28, 28))
    assert fields[2].rf == (28, 28) and fields[-1].out_shape == (3,)
    assert '"rf": [' in to_json(fields, (1, 28, 28)) and '"jump"' in to_json(fields, (1, 28, 28))
