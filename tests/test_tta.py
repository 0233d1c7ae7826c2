"""Test-time flip: used only for a model that training taught mirrored pictures, and averaged correctly; test-time
shifts: every view moved as a padded random crop moves it."""

import albumentations as A
import numpy as np
import pytest
import torch

from cnnpipe.analysis.predictions import predict, views
from cnnpipe.config import TrainConfig, parse_params
from cnnpipe.data.augmentation import flips_horizontally
from cnnpipe.errors import CnnpipeError
from cnnpipe.models.module import CnnClassifier
from cnnpipe.stages.evaluate import flip_at_test_time
from tests.test_datamodule import datamodule, make_data

FLIP = {"HorizontalFlip": {"p": 0.5}}
SHIFT = [
    {"PadIfNeeded": {"min_height": 12, "min_width": 12, "border_mode": 0}},
    {"RandomCrop": {"height": 10, "width": 10}},
]


@pytest.mark.parametrize(
    ("pipeline", "mirrors"),
    [
        (A.Compose([A.HorizontalFlip(p=0.5)]), True),
        (A.Compose([A.VerticalFlip(p=0.5), A.Rotate(limit=10)]), False),
        (A.Compose([A.OneOf([A.Blur(), A.Sequential([A.HorizontalFlip(p=1.0)])])]), True),
        (A.Compose([A.HorizontalFlip(p=0.0)]), False),
    ],
)
def test_a_pipeline_mirrors_when_any_horizontal_flip_may_fire(pipeline, mirrors):
    assert flips_horizontally(pipeline) is mirrors


@pytest.mark.parametrize(
    ("transforms", "online", "copies", "mirrored"),
    [([FLIP, *SHIFT], True, 0, True), (SHIFT, True, 0, False), ([FLIP], False, 0, False), ([FLIP], False, 1, True)],
)
def test_the_datamodule_knows_whether_training_saw_mirrored_images(tmp_path, transforms, online, copies, mirrored):
    make_data(tmp_path, transforms, copies)
    assert datamodule(tmp_path, online=online).trains_mirrored is mirrored


@pytest.mark.parametrize(
    ("tta", "trained_mirrored", "mirror"),
    [("auto", True, True), ("auto", False, False), ("none", True, False), ("hflip", False, True)],
)
def test_auto_flips_only_what_training_mirrored(tta, trained_mirrored, mirror):
    assert flip_at_test_time(tta, trained_mirrored) is mirror


def small_module() -> CnnClassifier:
    torch.manual_seed(0)
    layers = [{"type": "conv", "out": 4, "kernel": 3}, {"type": "relu"}, {"type": "flatten"}]
    module = CnnClassifier(
        {"layers": layers}, TrainConfig().model_dump(mode="json"), (1, 8, 8), list("abc"), [0.5], [0.25]
    )
    return module.eval()


def test_mirrored_predictions_are_the_mean_of_both_views():
    module = small_module()
    images = np.random.default_rng(0).integers(0, 256, (20, 8, 8, 1), dtype=np.uint8)
    labels = np.arange(20) % 3
    plain, mirrored = (predict(module, images, labels, 7, mirror) for mirror in (False, True))
    with torch.no_grad():
        batch = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        both = (module.probabilities(module(batch)) + module.probabilities(module(batch.flip(3)))) / 2
    assert np.array_equal(mirrored.predicted, both.argmax(1).numpy())
    assert np.allclose(mirrored.confidence, both.max(1).values.numpy(), atol=1e-6)
    expected_loss = float(torch.nn.functional.nll_loss(both.log(), torch.from_numpy(labels)))
    assert mirrored.loss == pytest.approx(expected_loss, rel=1e-5)
    assert not np.allclose(plain.confidence, mirrored.confidence)  # the network is not symmetric: both views count


def test_shifted_views_are_what_a_random_crop_of_the_zero_padded_image_shows():
    batch = torch.arange(2 * 1 * 4 * 5, dtype=torch.float32).reshape(2, 1, 4, 5) + 1
    shifted = views(batch, mirror=True, shift=2)
    assert len(shifted) == 2 * 5 * 5 and all(view.shape == batch.shape for view in shifted)
    padded = np.pad(batch.numpy(), ((0, 0), (0, 0), (2, 2), (2, 2)))  # PadIfNeeded with zeros, then crops
    crops = [padded[..., top : top + 4, left : left + 5] for top in range(5) for left in range(5)]
    assert all(np.array_equal(view.numpy(), crop) for view, crop in zip(shifted[:25], crops, strict=True))
    assert np.array_equal(shifted[12].numpy(), batch.numpy())  # no move: the image itself
    assert np.array_equal(shifted[25 + 12].numpy(), batch.flip(3).numpy())  # the mirror's own shifts follow
    assert [len(views(batch, mirror, 0)) for mirror in (False, True)] == [1, 2]


def test_shifted_predictions_are_the_mean_of_all_views():
    module = small_module()
    images = np.random.default_rng(1).integers(0, 256, (20, 8, 8, 1), dtype=np.uint8)
    labels = np.arange(20) % 3
    result = predict(module, images, labels, 7, mirror=True, shift=1)
    with torch.no_grad():
        batch = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        mean = torch.stack([module.probabilities(module(view)) for view in views(batch, True, 1)]).mean(0)
    assert np.array_equal(result.predicted, mean.argmax(1).numpy())
    assert np.allclose(result.confidence, mean.max(1).values.numpy(), atol=1e-6)
    assert not np.allclose(result.confidence, predict(module, images, labels, 7, mirror=True).confidence)


def test_a_shift_beyond_two_pixels_is_refused_by_name(raw_params):
    raw_params["evaluate"]["tta_shift"] = 3
    with pytest.raises(CnnpipeError, match=r"^params.yaml: evaluate.tta_shift: .* less than or equal to 2"):
        parse_params(raw_params)


@pytest.mark.parametrize(("channels_last", "nhwc"), [("auto", True), (False, False)])
def test_evaluation_takes_the_memory_format_train_channels_last_gives_the_cpu(channels_last, nhwc):
    layers = [{"type": "conv", "out": 4, "kernel": 3}, {"type": "relu"}, {"type": "conv", "out": 4, "kernel": 3}]
    train = TrainConfig(channels_last=channels_last).model_dump(mode="json")
    module = CnnClassifier({"layers": layers}, train, (1, 8, 8), list("abc"), [0.5], [0.25]).eval()
    images = np.random.default_rng(2).integers(0, 256, (5, 8, 8, 1), dtype=np.uint8)
    predict(module, images, np.arange(5) % 3, 5, mirror=True, shift=1)
    second_conv = [parameter for parameter in module.parameters() if parameter.dim() == 4][1]  # 4 channels in
    assert second_conv.is_contiguous(memory_format=torch.channels_last) is nhwc
    assert second_conv.is_contiguous() is not nhwc
