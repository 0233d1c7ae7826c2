import re
import subprocess
import sys

import pytest

from cnnpipe.config import load_params, parse_params
from cnnpipe.errors import CnnpipeError
from tests.helpers import REPO, write_params


def test_repository_params_are_valid():
    params = load_params(REPO / "params.yaml")
    assert params.data.source == "fashion-mnist"
    assert params.model.layers[0].type == "conv"


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("train", "lr", -0.1, "train.lr: Input should be greater than 0 (got -0.1)"),
        ("train", "lrr", 1, "train.lrr: unknown key"),
        ("data", "source", "imagenet", "data.source: Input should be 'fashion-mnist', 'mnist', 'cifar10'"),
        ("data", "val_fraction", 1.5, "data.val_fraction: Input should be less than 1"),
        ("train", "precision", "8-bit", "train.precision: Input should be 'auto'"),
        ("train", "devices", "many", "train.devices: Input should be a valid integer"),
        ("augment", "copies", -1, "augment.copies: Input should be greater than or equal to 0"),
        ("data", "source", "imagefolder", "data.path: is required when data.source is 'imagefolder'"),
        ("train", "sync_batchnorm", True, "train.sync_batchnorm: needs train.accelerator: gpu (got auto)"),
        ("train", "strategy", "ddp_spawn", "train.strategy: Input should be 'auto', 'ddp'"),
    ],
)
def test_invalid_values_name_the_key_and_what_is_valid(raw_params, section, key, value, expected):
    raw_params[section][key] = value
    with pytest.raises(CnnpipeError) as error:
        parse_params(raw_params)
    assert expected in str(error.value)
    assert "\n" not in str(error.value)


def test_layer_errors_name_the_layer(raw_params):
    raw_params["model"]["layers"][4]["kernel"] = 0
    with pytest.raises(CnnpipeError, match=r"model\.layers\[4\]\.kernel: Input should be greater than 0"):
        parse_params(raw_params)
    raw_params["model"]["layers"][4] = {"type": "convolution", "out": 8}
    with pytest.raises(CnnpipeError, match=r"model\.layers\[4\]: unknown layer type 'convolution'; valid: conv,"):
        parse_params(raw_params)


def test_transforms_must_be_single_mappings(raw_params):
    raw_params["augment"]["transforms"] = [{"HorizontalFlip": {"p": 0.5}, "VerticalFlip": {}}]
    with pytest.raises(CnnpipeError, match=r"augment\.transforms: .*single mapping"):
        parse_params(raw_params)


def test_cli_reports_bad_params_in_one_line_with_exit_code_2(tmp_path, raw_params):
    raw_params["train"]["lr"] = "fast"
    params_file = write_params(tmp_path / "params.yaml", raw_params)
    result = subprocess.run(
        [sys.executable, "-m", "cnnpipe", "--params", str(params_file), "check", "--input", "1,28,28"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "train.lr" in result.stderr and "Traceback" not in result.stderr


def test_cli_reports_broken_yaml_and_missing_file(tmp_path):
    broken = tmp_path / "params.yaml"
    broken.write_text("train:\n  lr: [0.1\n")
    for params_file, expected in ((broken, "not valid YAML at line"), (tmp_path / "nope.yaml", "file not found")):
        result = subprocess.run(
            [sys.executable, "-m", "cnnpipe", "--params", str(params_file), "check", "--input", "1,28,28"],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 2
        assert expected in result.stderr


def test_check_prints_the_shape_table(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "cnnpipe", "--params", str(REPO / "params.yaml"), "check", "--input", "1,28,28"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "[48, 7, 7]" in result.stdout and "[2352]" in result.stdout


def test_width_multiplies_every_conv_and_dense_layer(raw_params):
    from cnnpipe.models.network import build_model_network

    raw_params["model"]["width"] = 0.5
    plan, network = build_model_network(parse_params(raw_params).model, (1, 28, 28), 10, [0.0], [1.0])
    widths = [layer.out_shape[0] for layer in plan if layer.kind in ("conv", "dense")]
    assert widths == [8, 24, 128, 10]  # 16, 48 and 256 halved; the head keeps one logit per class


def test_width_is_refused_for_a_torchvision_network(raw_params):
    raw_params["model"].update(preset="torchvision:resnet18", width=2)
    with pytest.raises(
        CnnpipeError, match=r"^params.yaml: model.width: applies to .* and to resnet-small, not to torchvision:resnet18"
    ):
        parse_params(raw_params)


def test_width_widens_every_stage_of_resnet_small(raw_params):
    from cnnpipe.models.network import build_model_network, widths

    raw_params["model"].update(preset="resnet-small", width=2.5)
    _, network = build_model_network(parse_params(raw_params).model, (1, 28, 28), 10, [0.0], [1.0])
    assert widths(network) == [40] * 5 + [80] * 5 + [160] * 5 + [10]  # stem and 2 blocks of 2 convs; 1x1 shortcuts


@pytest.mark.parametrize(
    ("where", "key", "expected"),
    [
        ((), "trian", "trian: unknown key; did you mean 'train'? valid keys at the top level: seed, data,"),
        (
            ("train", "early_stopping"),
            "patiance",
            "patiance: unknown key; did you mean 'patience'? valid keys of train.early_stopping: patience, min_delta",
        ),
        (
            ("model", "layers", 4),
            "kernal",
            "model.layers[4].kernal: unknown key; did you mean 'kernel'? valid keys "
            "of a conv layer: type, out, kernel, stride, padding, dilation, groups, bias, in",
        ),
        (
            ("model", "layers", 3),
            "strides",
            "model.layers[3].strides: unknown key; did you mean 'stride'? valid "
            "keys of a maxpool layer: type, kernel, stride, padding",
        ),
        (("mlflow",), "zzz", "mlflow.zzz: unknown key; valid keys of mlflow: tracking_uri, experiment,"),
    ],
)
def test_unknown_keys_list_the_valid_ones_and_the_closest(raw_params, where, key, expected):
    holder = raw_params
    for part in where:
        holder = holder[part]
    holder[key] = 3
    with pytest.raises(CnnpipeError) as error:
        parse_params(raw_params)
    assert expected in str(error.value)


def test_a_misspelt_required_section_is_reported_as_the_typo(raw_params):
    raw_params["modle"] = raw_params.pop("model")  # `model` is missing too; the typo is the cause
    with pytest.raises(
        CnnpipeError, match=r"^params.yaml: modle: unknown key; did you mean 'model'\? .* \(and 1 more\)$"
    ):
        parse_params(raw_params)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("seed: 1\n".encode("utf-16"), "not UTF-8 text (it is UTF-16)"),
        ("seed: 1\n".encode("utf-16-le"), "not UTF-8 text (it holds NUL bytes"),
        ("seed: 1 # caf\xe9\n".encode("latin-1"), "not UTF-8 text (byte 13 is 0xe9)"),
    ],
)
def test_a_params_file_that_is_not_utf8_text_is_named(tmp_path, content, expected):
    (tmp_path / "params.yaml").write_bytes(content)
    with pytest.raises(CnnpipeError, match="^" + re.escape(f"{tmp_path}/params.yaml: {expected}")):
        load_params(tmp_path / "params.yaml")


@pytest.mark.parametrize(
    "data, expected",
    [
        ({}, "fashion-mnist"),
        ({"source": "cifar10"}, "cifar10"),
        ({"classes": ["T-shirt/top", "Ankle boot"]}, "fashion-mnist-T-shirt-top-Ankle-boot"),  # another task
        ({"source": "imagefolder", "path": "/data/My Leaves/"}, "My-Leaves"),
        ({"source": "archive", "path": "https://example.org/sets/shapes.tar.gz?raw=1"}, "shapes"),
        ({"source": "archive", "path": "../pets.zip"}, "pets"),
    ],
)
def test_runs_and_models_are_named_after_the_data_by_default(raw_params, data, expected):
    raw_params["data"].update(data)
    mlflow = parse_params(raw_params).mlflow
    assert (mlflow.experiment, mlflow.registered_model) == (expected, expected)


def test_names_set_by_hand_win_and_a_long_name_stays_valid(raw_params):
    raw_params["mlflow"].update(experiment="shared", registered_model=None)
    assert (parse_params(raw_params).mlflow.experiment, parse_params(raw_params).mlflow.registered_model) == (
        "shared",
        "fashion-mnist",
    )
    raw_params["data"].update(source="imagefolder", path="x" * 150, classes=[])
    name = parse_params(raw_params).mlflow.registered_model
    assert len(name) == 100 and name.startswith("xxx")
    raw_params["data"]["source"] = "nonsense"  # the data's own error, not a name's
    with pytest.raises(CnnpipeError, match=r"^params.yaml: data.source: "):
        parse_params(raw_params)
