"""Your own pictures on the first try: the README's own-data command learns a small folder as written, pictures of
any size train at their own size with the default augmentation, and a schedule too short to learn is said."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from benchmarks.pipeline import override
from cnnpipe.config import parse_params
from cnnpipe.models.schedule import too_short
from cnnpipe.paths import Paths
from cnnpipe.stages import augment, evaluate, pull, train
from tests.helpers import REPO
from tests.images import make_shapes_folder


def readme_command() -> list[str]:
    """The -S assignments of the README's own-data command ("Bring your own data"), as written there."""
    line = next(line for line in (REPO / "README.md").read_text().splitlines() if "-S data.source=imagefolder" in line)
    words = shlex.split(line.split("#")[0])
    return [words[index + 1] for index, word in enumerate(words) if word == "-S"]


def pipeline(root: Path, pictures: Path, assignments: list[str], **train_settings) -> dict[str, float]:
    """pull, augment, train and evaluate in this process, on params.yaml with `assignments` as `dvc exp run -S`
    sets them and data.path pointing at `pictures`; returns the test metrics."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for assignment in assignments:
        override(raw, assignment)
    raw["data"]["path"] = str(pictures)
    raw["train"].update(accelerator="cpu", devices=1, threads=1, **train_settings)
    raw["mlflow"].update(tracking_uri=f"sqlite:///{root}/mlflow.db", system_metrics=False)
    params, paths = parse_params(raw), Paths.under(root)
    for stage in (pull, augment, train):
        stage.run(params, paths)
    return evaluate.run(params, paths)


def test_the_readme_own_data_command_learns_a_small_folder_as_written(tmp_path, capsys):
    assignments = readme_command()
    assert any(item.startswith("train.epochs=") for item in assignments)  # a schedule for a small folder
    pictures = make_shapes_folder(tmp_path / "shapes", 48)  # 3 classes of 60: 129 training pictures
    metrics = pipeline(tmp_path / "run", pictures, assignments)
    assert metrics["test/acc"] > 0.6  # chance is 1/3
    assert "optimizer steps in all" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "size, fmt, channels",
    [(28, "png", 1), (32, "png", 3), (64, "png", 3), (96, "png", 3), (224, "jpeg", 3)],
    ids=["28-greyscale", "32", "64", "96", "224-jpeg"],
)
def test_pictures_of_any_size_train_at_their_own_size(tmp_path, size, fmt, channels):
    """params.yaml's augmentation at the data's own size (no data.image_size), through training and evaluation."""
    pictures = make_shapes_folder(tmp_path / "shapes", size, per_class=12, fmt=fmt)
    assignments = ["data.source=imagefolder", f"data.channels={channels}", "train.batch_size=8", "train.epochs=1"]
    metrics = pipeline(tmp_path / "run", pictures, assignments, limit_train_batches=2, limit_val_batches=1)
    assert 0 <= metrics["test/acc"] <= 1
    preview = tmp_path / "run/data/augmented/preview.png"
    assert preview.stat().st_size > 0


def test_a_schedule_too_short_to_learn_is_said_before_training_with_what_to_change(tmp_path, capsys):
    pictures = make_shapes_folder(tmp_path / "shapes", 16, per_class=60)
    pipeline(tmp_path / "run", pictures, ["data.source=imagefolder", "train.epochs=3"])
    warnings = [line for line in capsys.readouterr().err.splitlines() if "optimizer steps in all" in line]
    assert warnings == [
        "warning: train: 6 optimizer steps in all (3 epochs of 2 batches of 128 from 129 training images) are too "
        "few to learn from; for 200 or more set train.epochs: 100, or train.batch_size: 8 (17 steps an epoch) and "
        "train.epochs: 12"
    ]


@pytest.mark.parametrize(
    "steps, epochs, images, batch_size, devices, expected",
    [
        (8440, 20, 54000, 128, 1, None),  # Fashion-MNIST's default
        (200, 100, 200, 128, 1, None),
        (40, 2, 2500, 128, 1, r"^train: 40 optimizer steps .* set train.epochs: 10$"),  # enough batches an epoch
        (4, 2, 300, 64, 2, r"\(2 epochs of 2 batches of 64 x 2 devices .* train.batch_size: 8 \(19 steps an epoch\)"),
    ],
)
def test_too_short_counts_steps_and_offers_a_smaller_batch_where_an_epoch_has_few(
    steps, epochs, images, batch_size, devices, expected
):
    line = too_short(steps, epochs, images, batch_size, devices)
    assert line is None if expected is None else re.search(expected, line), line
