"""Your own nn.Module (`model.class`): built with the data's channels, given cnnpipe's head, trained, described,
exported and served like a preset; a network file that cannot work is one line naming it; DVC watches it."""

from __future__ import annotations

import contextlib
import json
import re

import pytest
import torch
import yaml

from cnnpipe.config import ModelConfig, parse_params
from cnnpipe.errors import CnnpipeError
from cnnpipe.models.network import build_model_network
from cnnpipe.models.own_network import check_watched
from tests.faults import refused_and_kept
from tests.helpers import REPO, run_cnnpipe, sh, write_params
from tests.images import make_image_folder

NET = """
from torch import nn


class Net(nn.Module):
    def __init__(self, in_channels, width=4):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        return self.pool(self.conv(x).relu())
"""


def _net(body: str, name: str = "Net") -> str:
    """A network file whose class `name` runs `body` as its forward."""
    return (
        f"from torch import nn\nimport torch\n\nclass {name}(nn.Module):\n"
        "    def __init__(self, in_channels):\n        super().__init__()\n"
        "        self.conv = nn.Conv2d(in_channels, 4, 3)\n\n"
        f"    def forward(self, x):\n        {body}\n"
    )


def test_the_network_gets_the_data_channels_and_cnnpipe_head(tmp_path):
    (tmp_path / "net.py").write_text(NET)
    config = ModelConfig.model_validate({"class": f"{tmp_path}/net.py:Net", "args": {"width": 6}})
    plan, network = build_model_network(config, (3, 20, 20), 5, [0.5] * 3, [0.25] * 3)
    assert network.body.conv.in_channels == 3 and network.body.conv.out_channels == 6
    assert [(row.name, list(row.out_shape)) for row in plan] == [
        ("body.conv", [6, 20, 20]),
        ("body.pool", [6, 10, 10]),
        ("flatten_head", [600]),
        ("head", [5]),
    ]
    assert network(torch.rand(4, 3, 20, 20)).shape == (4, 5)
    _, binary = build_model_network(config, (1, 20, 20), 2, [0.5], [0.25])  # two classes: one logit, a sigmoid
    assert binary(torch.rand(3, 1, 20, 20)).shape == (3, 1)


def test_a_network_of_features_gets_a_dense_head_without_a_flatten(tmp_path):
    (tmp_path / "net.py").write_text(_net("return self.conv(x).mean(dim=(2, 3))"))
    plan, network = build_model_network(
        ModelConfig.model_validate({"class": f"{tmp_path}/net.py:Net"}), (1, 12, 12), 3, [0.5], [0.25]
    )
    assert [row.name for row in plan] == ["body.conv", "head"] and network.head.in_features == 4


@pytest.mark.parametrize(
    "source, model, expected",
    [
        ("def broken(:\n", {}, r"net.py does not import: SyntaxError: .*\(line 1\)"),
        ("import no_such_module_for_cnnpipe\n", {}, r"net.py does not import: ModuleNotFoundError: .*\(line 1\)"),
        (
            "x = 1\n\n\nraise RuntimeError('no GPU here')\n",
            {},
            r"net.py does not import: RuntimeError: no GPU .*line 4",
        ),
        (NET, {"class": "net.py:Missing"}, r"net.py has no class 'Missing'; its nn.Module classes: Net$"),
        (NET, {"args": {"depth": 3}}, r"net.py:Net\(in_channels=1, depth=3\) fails: TypeError: .*'depth'"),
        (
            "def Net(in_channels):\n    return 3\n",
            {},
            r"net.py:Net\(in_channels=1\) returns an object of type int, not a torch",
        ),
        (_net("return self.conv(x)[:, 0]"), {}, r"into a \[2, 10, 10\] tensor; it must return feature maps"),
        (_net("return self.conv(x), x"), {}, r"returns a tuple for a \[1, 12, 12\] input, not a tensor"),
        (_net("return self.conv(x)[:, :, :0]"), {}, r"into an empty \[4, 0, 10\] output; give it larger images"),
        (_net("return self.conv(x).view(2, 999)"), {}, r"net.py:Net cannot take a \[1, 12, 12\] input: RuntimeError"),
    ],
    ids=["syntax", "import", "raises", "no-class", "arguments", "not-a-module", "3-d", "tuple", "empty", "forward"],
)
def test_a_network_file_that_cannot_work_is_one_line_naming_it(tmp_path, raw_params, source, model, expected):
    (tmp_path / "net.py").write_text(source)
    raw_params["model"].update({"class": "net.py:Net", **model})
    write_params(tmp_path / "params.yaml", raw_params)
    line = refused_and_kept(tmp_path, "check", "--input", "1,12,12", "--classes", "3", names=("model.class", "net.py"))
    assert line.startswith("cnnpipe: error: model.class: ")
    assert re.search(expected, line), line


def test_a_missing_file_and_a_module_that_is_no_file_say_how_to_name_one(tmp_path, raw_params):
    raw_params["model"]["class"] = "networks/nothing.py:Net"
    write_params(tmp_path / "params.yaml", raw_params)
    line = refused_and_kept(tmp_path, "check", "--input", "1,12,12", names=("model.class", "networks/nothing.py"))
    assert "no such file (a path relative to the repository root" in line
    raw_params["model"]["class"] = "networks.nothing:Net"
    write_params(tmp_path / "params.yaml", raw_params)
    line = refused_and_kept(tmp_path, "check", "--input", "1,12,12", names=("model.class", "networks.nothing"))
    assert "is written PATH.py:NAME, such as networks/nothing.py:NAME" in line


@pytest.mark.parametrize(
    "model, expected",
    [
        ({"class": "net.py"}, "model.class: 'net.py' is not PATH.py:NAME"),
        ({"class": "my nets:Net"}, "model.class: 'my nets' is neither a .py file nor a dotted module name"),
        ({"class": "net.py:Net", "preset": "lenet5"}, "model.class: set model.class or model.preset (lenet5)"),
        ({"class": "net.py:Net", "width": 2}, "model.width: applies to layer lists and presets, not to model.class"),
        ({"class": "net.py:Net", "args": {"in_channels": 3}}, "model.args: in_channels is cnnpipe's to give"),
        ({"args": {"width": 3}}, "model.args: applies to model.class (your own network) only"),
    ],
)
def test_what_model_class_takes_is_checked_with_the_params(raw_params, model, expected):
    raw_params["model"].update(model)
    with pytest.raises(CnnpipeError, match=f"^params.yaml: {expected}".replace("(", r"\(").replace(")", r"\)")):
        parse_params(raw_params)


def test_dvc_must_watch_the_network_file(tmp_path, raw_params):
    (tmp_path / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    for folder in ("networks", "elsewhere"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "net.py").write_text(NET)
    raw_params["model"]["class"] = "networks/net.py:Net"
    with contextlib.chdir(tmp_path):
        check_watched(parse_params(raw_params).model)  # networks/ is a dependency of train
    raw_params["model"]["class"] = "elsewhere/net.py:Net"
    write_params(tmp_path / "params.yaml", raw_params)
    line = refused_and_kept(tmp_path, "check", "--input", "1,12,12", names=("model.class", "elsewhere/net.py"))
    assert "is not a dependency of train in dvc.yaml" in line and "move it into networks/" in line


@pytest.mark.e2e
def test_an_own_network_trains_through_dvc_repro_describes_exports_and_predicts(repo, tmp_path_factory):
    """The example of the README, networks/small_cnn.py, from params to a served prediction; editing it reruns
    train, and a checkpoint no longer loads with other code."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["model"].update({"class": "networks/small_cnn.py:SmallCNN", "args": {"width": 8}})
    params["export"]["verify_images"] = 200
    params["train"]["limit_train_batches"] = 20  # a network that pools globally learns slower than the default
    write_params(repo / "params.yaml", params)
    output = sh("dvc", "repro", cwd=repo).stdout
    assert "body.features" in output and "flatten_head" in output  # the shape table of the network's modules
    assert json.loads((repo / "metrics/test.json").read_text())["test/acc"] > 0.5  # 3 classes: chance is 0.33
    exported = json.loads((repo / "data/export/export.json").read_text())["formats"]  # each checked against PyTorch
    assert sorted(exported) == ["onnx", "torchscript"]
    assert all(entry["verification"]["max_abs_diff"] <= 1e-4 for entry in exported.values())
    rf = json.loads(run_cnnpipe("rf", "params", "--json", cwd=repo).stdout)
    assert [layer["name"] for layer in rf["layers"]][:2] == ["normalize", "body.features.0"]
    assert rf["layers"][1]["rf"] == [3, 3]

    pictures = make_image_folder(tmp_path_factory.mktemp("pictures"), classes=("any",), per_class=2, size=(28, 28))
    predicted = run_cnnpipe("predict", str(pictures), cwd=repo)
    assert predicted.stdout.count("\n") == 3 and "Model: data/train/model.ckpt (MLflow run " in predicted.stderr

    (repo / "networks/small_cnn.py").write_text((repo / "networks/small_cnn.py").read_text() + "\n# edited\n")
    assert "train:" in sh("dvc", "status", cwd=repo).stdout
    refused = run_cnnpipe("predict", str(pictures), cwd=repo, check=False)
    assert refused.returncode == 2 and "is not the code this model was trained with" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_a_forward_that_branches_on_values_is_said_when_traced(tmp_path, capsys):
    """TorchScript's trace keeps one branch of a forward that asks its tensors' values: a warning, not silence."""
    from cnnpipe.inference.export import to_torchscript
    from cnnpipe.models.module import Predictor

    (tmp_path / "net.py").write_text(_net("y = self.conv(x)\n        return y if y.mean() > 0 else -y"))
    _, branching = build_model_network(
        ModelConfig.model_validate({"class": f"{tmp_path}/net.py:Net"}), (1, 12, 12), 3, [0.5], [0.25]
    )
    _, plain = build_model_network(ModelConfig(preset="lecture"), (1, 12, 12), 3, [0.5], [0.25])
    to_torchscript(Predictor(plain, False), (1, 12, 12), tmp_path / "plain.pt", {})
    assert capsys.readouterr().err == ""
    to_torchscript(Predictor(branching, False), (1, 12, 12), tmp_path / "branching.pt", {})
    assert re.fullmatch(
        r"warning: TorchScript: the network's forward depends on its tensors' values \(net.py, line 11: Converting "
        r"a tensor to a Python boolean might cause the trace to be incorrect\); .* against PyTorch\)\n",
        capsys.readouterr().err,
    )
