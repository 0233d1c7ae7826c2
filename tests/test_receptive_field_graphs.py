"""The receptive-field engine on graphs (residual, inception-like, upsampling) against the gradient footprint."""

import json
import random

import pytest
import torch
import torchvision
from torch import nn

from cnnpipe.analysis.receptive_field import receptive_fields
from cnnpipe.errors import CnnpipeError


class Residual(nn.Module):
    def __init__(self, channels: int, out: int, kernel: int, stride: int):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(channels, out, kernel, stride, kernel // 2), nn.ReLU(), nn.Conv2d(out, out, 3, 1, 1)
        )
        self.shortcut = nn.Identity() if stride == 1 and channels == out else nn.Conv2d(channels, out, 1, stride)

    def forward(self, x):
        return torch.relu(self.main(x) + self.shortcut(x))


class Inception(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.branches = nn.ModuleList(
            [
                nn.Conv2d(channels, 2, 1),
                nn.Conv2d(channels, 2, 3, padding=1),
                nn.Sequential(nn.Conv2d(channels, 2, 3, padding=1), nn.Conv2d(2, 2, 5, padding=2)),
                nn.AvgPool2d(3, 1, 1),
            ]
        )

    def forward(self, x):
        return torch.cat([branch(x) for branch in self.branches], dim=1)


def random_graph(rng: random.Random) -> tuple[nn.Module, list[str]]:
    blocks, channels = [], 2
    for _ in range(rng.randint(2, 4)):
        choice = rng.random()
        if choice < 0.45:
            out = rng.randint(2, 4)
            blocks.append(Residual(channels, out, rng.choice([1, 3, 5]), rng.choice([1, 2])))
            channels = out
        elif choice < 0.7:
            blocks.append(Inception(channels))
            channels += 6
        else:
            blocks.append(nn.AvgPool2d(rng.choice([2, 3]), rng.choice([1, 2])))
    model = nn.Sequential(*blocks).double()
    for module in model.modules():  # positive weights on positive inputs: nothing cancels, ReLU passes all
        if isinstance(module, nn.Conv2d):
            nn.init.uniform_(module.weight, 0.1, 1.0)
            nn.init.uniform_(module.bias, 0.1, 1.0)
    return model, [str(index) for index in range(len(blocks))]


def footprint(model: nn.Module, name: str, shape, unit) -> tuple[tuple[int, int], tuple[int, int]]:
    """First and last input row and column whose gradient for one output position of `name` is non-zero."""
    captured = {}
    hook = dict(model.named_modules())[name].register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
    x = torch.rand(1, *shape, dtype=torch.float64, requires_grad=True)
    model(x)
    hook.remove()
    (gradient,) = torch.autograd.grad(captured["out"][0, :, unit[0], unit[1]].sum(), x)  # all channels: the union
    influence = gradient[0].abs().sum(dim=0) > 0
    rows = influence.any(dim=1).nonzero().flatten()
    cols = influence.any(dim=0).nonzero().flatten()
    return (rows.min().item(), rows.max().item()), (cols.min().item(), cols.max().item())


def interior_units(field, shape):
    """Units whose whole field lies inside the image, per axis (at the border, padding hides the field)."""
    units = []
    for axis in (0, 1):
        half = (field.rf[axis] - 1) / 2
        units.append(
            [
                i
                for i in range(field.out_shape[1 + axis])
                if field.start[axis] + i * field.jump[axis] - half >= 0
                and field.start[axis] + i * field.jump[axis] + half <= shape[1 + axis] - 1
            ]
        )
    return units


@pytest.mark.parametrize("seed", range(12))
def test_graphs_with_residuals_and_concatenation_match_the_gradient_footprint(seed):
    torch.manual_seed(seed)
    model, names = random_graph(random.Random(seed))
    shape = (2, 64, 56)
    fields = {field.name: field for field in receptive_fields(model.float(), shape)}
    model.double()
    checked = 0
    for name in names:
        field = fields[name]
        assert field.aligned
        rows, cols = interior_units(field, shape)
        if not rows or not cols:
            continue
        unit = (rows[len(rows) // 2], cols[len(cols) // 2])
        measured = footprint(model, name, shape, unit)
        for axis, (first, last) in enumerate(measured):
            centre = field.start[axis] + unit[axis] * field.jump[axis]
            half = (field.rf[axis] - 1) / 2
            assert (first, last) == (centre - half, centre + half), (seed, name, field)
        checked += 1
    assert checked


class Shifted(nn.Module):
    """Two branches whose units are centred half a pixel apart."""

    def __init__(self):
        super().__init__()
        self.odd, self.even = nn.Conv2d(1, 1, 3, padding=1), nn.Conv2d(1, 1, 2)

    def forward(self, x):
        return self.odd(x) + nn.functional.pad(self.even(x), (0, 1, 0, 1))


def test_branches_that_disagree_are_reported_not_aligned():
    fields = {field.name: field for field in receptive_fields(nn.Sequential(Shifted()), (1, 16, 16))}
    assert fields["0.odd"].aligned and fields["0.even"].aligned
    assert (fields["0.odd"].start, fields["0.even"].start) == ((0, 0), (0.5, 0.5))
    assert not fields["0"].aligned
    assert fields["0"].rf == (3, 3) and fields["0"].start == (0, 0)  # the union of [-1, 1] and [0, 1]


@pytest.mark.parametrize(
    "upsampler",
    [
        nn.ConvTranspose2d(3, 3, 4, 2, 1),
        nn.ConvTranspose2d(3, 3, 3, 2, 1, output_padding=1),
        nn.Upsample(scale_factor=2),
        nn.Upsample(scale_factor=2, mode="bilinear"),
    ],
)
def test_upsampling_fields_are_the_tightest_hull_of_every_footprint(upsampler):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, 2, 1), upsampler, nn.Conv2d(3, 1, 3, 1, 1)).double()
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.uniform_(module.weight, 0.1, 1.0)
    shape = (1, 40, 40)
    field = {field.name: field for field in receptive_fields(model.float(), shape)}["2"]
    model.double()
    slack = []
    for unit in range(14, 22):
        (first, last), _ = footprint(model, "2", shape, (unit, 20))
        centre = field.start[0] + unit * field.jump[0]
        half = (field.rf[0] - 1) / 2
        assert centre - half <= first and last <= centre + half, (unit, first, last, field)
        slack.append((first - (centre - half), centre + half - last))
    assert min(low for low, _ in slack) == 0 and min(high for _, high in slack) == 0


def test_well_known_networks():
    fields = {f.name: f for f in receptive_fields(torchvision.models.resnet18(), (3, 224, 224))}
    assert fields["layer4"].rf == (435, 435) and fields["layer4"].jump == (32, 32)
    assert fields["layer4"].out_shape == (512, 7, 7) and fields["layer1.0.conv1"].rf == (19, 19)
    vgg = {f.name: f for f in receptive_fields(torchvision.models.vgg16().features, (3, 224, 224))}
    assert vgg["29"].rf == (196, 196) and vgg["30"].rf == (212, 212)


def test_an_unknown_function_names_the_module_type():
    class Spectral(nn.Module):
        def forward(self, x):
            return torch.fft.fft2(x).real

    with pytest.raises(CnnpipeError, match=r"module type Spectral \('1'\) uses fft_fft2"):
        receptive_fields(nn.Sequential(nn.Conv2d(1, 1, 3), Spectral()), (1, 8, 8))


def test_cli_prints_the_documented_json_and_a_table(tmp_path):
    from tests.helpers import REPO, run_cnnpipe

    result = run_cnnpipe(
        "--params", str(REPO / "params.yaml"), "rf", "params", "--input", "1,28,28", "--json", cwd=tmp_path
    )
    report = json.loads(result.stdout)
    assert report["input"] == [1, 28, 28]
    layer = next(layer for layer in report["layers"] if layer["name"] == "maxpool2")
    assert {key: layer[key] for key in ("type", "out_shape", "rf", "jump", "start")} == {
        "type": "MaxPool2d",
        "out_shape": [48, 7, 7],
        "rf": [10, 10],
        "jump": [4, 4],
        "start": [1.5, 1.5],
    }
    table = run_cnnpipe("rf", "torchvision:resnet18", cwd=tmp_path).stdout
    assert "layer4" in table and "435x435" in table
    failed = run_cnnpipe("rf", "torchvision:resnet19", cwd=tmp_path, check=False)
    assert failed.returncode == 2 and "unknown torchvision classifier 'resnet19'" in failed.stderr
    small = json.loads(run_cnnpipe("rf", "resnet-small", "--input", "3,32,32", "--json", cwd=tmp_path).stdout)
    last_block = next(layer for layer in small["layers"] if layer["name"] == "body.8")
    # stem 3, + 2 blocks x 4 (stride 1), + 2 + 2 + 4 (stride 2), + 4 + 4 + 8 + 8 (jump 4): 53
    assert (last_block["rf"], last_block["jump"], last_block["type"]) == ([53, 53], [4, 4], "ResidualBlock")
