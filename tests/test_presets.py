"""Each preset trains a few steps in the real train stage, and reloads for evaluation."""

import json

import pytest

from cnnpipe.config import parse_params
from cnnpipe.errors import CnnpipeError
from tests.helpers import run_cnnpipe, small_run_params, write_params


@pytest.mark.parametrize("preset", ["lecture", "lenet5", "vgg-small", "resnet-small", "torchvision:resnet18"])
def test_preset_trains_in_the_train_stage(workdir, raw_params, preset):
    """Each preset in its own folder, from the data the session's `prepared_data` pulled and augmented once."""
    root, raw = workdir, small_run_params(raw_params, workdir)
    raw = {
        **raw,
        "model": {"preset": preset, "layers": []},
        "train": {**raw["train"], "epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1},
    }
    write_params(root / "params.yaml", raw)
    run_cnnpipe("train", cwd=root)
    metrics = json.loads((root / "metrics/train.json").read_text())
    assert metrics["best/epoch"] == 0 and metrics["train_time_s"] > 0  # its one epoch trained
    if preset == "resnet-small":  # a module preset reloads from its checkpoint alone
        run_cnnpipe("evaluate", cwd=root)
        assert json.loads((root / "metrics/test.json").read_text())["test/count"] == 3000


def test_unknown_or_unfitting_presets_are_clear_errors(raw_params, tmp_path):
    raw_params["model"]["preset"] = "resnet-tiny"
    with pytest.raises(CnnpipeError, match=r"model.preset: unknown preset 'resnet-tiny'; valid: lecture, lenet5"):
        parse_params(raw_params)
    raw_params["model"]["preset"] = "torchvision:vgg11"
    write_params(tmp_path / "params.yaml", raw_params)
    result = run_cnnpipe("check", "--input", "1,28,28", cwd=tmp_path, check=False)
    assert result.returncode == 2 and "torchvision:vgg11 cannot take a [1, 28, 28] input" in result.stderr
