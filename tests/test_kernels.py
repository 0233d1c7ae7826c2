"""The lecture's kernels and worked examples, with their exact numbers, and handcrafted first layers."""

import numpy as np
import pytest
import torch
from PIL import Image

from cnnpipe.analysis.kernels import KERNELS, filter_image, read_greyscale, writable_suffixes
from cnnpipe.config import TrainConfig
from cnnpipe.errors import CnnpipeError
from cnnpipe.models.module import CnnClassifier
from tests.helpers import run_cnnpipe

LECTURE_IMAGE = np.array(
    [[10, 10, 10, 0, 0], [0, 10, 10, 10, 0], [0, 0, 10, 10, 10], [0, 0, 10, 10, 0], [0, 10, 10, 0, 0]]
)


def test_the_lectures_worked_example():
    # "New pixel values are determined by multiplying the kernel values with the pixel values and summing"
    assert filter_image(LECTURE_IMAGE, "lecture_x").tolist() == [[40, 30, 40], [20, 40, 30], [20, 30, 40]]


def test_the_vertical_edge_detector_finds_the_edge():
    image = np.array([[10, 10, 10, 0, 0, 0]] * 6)
    assert filter_image(image, "vertical_edge").tolist() == [[0, 30, 30, 0]] * 4
    assert filter_image(image, "horizontal_edge").tolist() == [[0, 0, 0, 0]] * 4


def test_stride_and_padding_as_in_the_lecture():
    # stride 2 on 5x5 without padding: 2x2; "solved by padding": padding 1 gives 3x3
    assert filter_image(LECTURE_IMAGE, "lecture_x", stride=2).tolist() == [[40, 40], [20, 40]]
    padded = filter_image(LECTURE_IMAGE, "lecture_x", stride=2, padding=1)
    assert padded.shape == (3, 3) and padded[0, 0] == 10 + 10  # the centre (0, 0) and the corner (1, 1)
    assert filter_image(LECTURE_IMAGE, "laplacian", padding=1).shape == (5, 5)
    assert np.isclose(filter_image(np.full((4, 4), 9.0), "box_blur"), 9).all()


def test_every_named_kernel_is_3x3_and_unknown_names_list_the_valid_ones():
    assert all(np.array(values).shape == (3, 3) for values in KERNELS.values())
    with pytest.raises(CnnpipeError, match="unknown kernel 'sobel'; valid: vertical_edge"):
        filter_image(LECTURE_IMAGE, "sobel")


@pytest.mark.parametrize(
    ("stride", "padding", "expected"),
    [
        (0, 0, "--stride: must be 1 to 5 "),
        (6, 0, "--stride: must be 1 to 5 "),
        (1, -1, "--padding: must be 0 to 2 for a 3x3 kernel"),
        (1, 3, "--padding: must be 0 to 2 for a 3x3 kernel"),
    ],
)
def test_stride_and_padding_outside_their_range_are_refused(stride, padding, expected):
    with pytest.raises(CnnpipeError, match=f"^{expected}"):
        filter_image(LECTURE_IMAGE, "lecture_x", stride=stride, padding=padding)


def test_outputs_are_the_formats_pil_writes_in_greyscale():
    suffixes = writable_suffixes()
    assert {".png", ".jpg", ".tif", ".bmp"} <= set(suffixes)
    assert not {".xbm", ".h5", ".txt", ".psd"} & set(suffixes)  # refuses mode L, a stub, not an image, read-only


def test_cli_writes_the_feature_map(tmp_path):
    Image.fromarray(LECTURE_IMAGE.astype(np.uint8)).save(tmp_path / "lecture.png")
    result = run_cnnpipe(
        "kernels", str(tmp_path / "lecture.png"), "--kernel", "sobel_x", "--padding", "1", cwd=tmp_path
    )
    assert "[5, 5] * sobel_x" in result.stdout
    assert Image.open(tmp_path / "lecture-sobel_x.png").size == (5, 5)
    missing = run_cnnpipe("kernels", str(tmp_path / "none.png"), "--kernel", "sobel_x", cwd=tmp_path, check=False)
    assert missing.returncode == 2 and "IMAGE: cannot read" in missing.stderr


def classifier(first_layer: list[str], out: int, channels: int = 1) -> CnnClassifier:
    model = {
        "layers": [{"type": "conv", "out": out, "kernel": 3, "padding": 1}, {"type": "relu"}],
        "fixed_first_layer": first_layer,
    }
    return CnnClassifier(
        model,
        TrainConfig().model_dump(mode="json"),
        (channels, 6, 6),
        ["a", "b", "c"],
        [0.0] * channels,
        [1.0] * channels,
    )


def test_fixed_first_layer_starts_from_the_kernels_and_is_frozen():
    module = classifier(["vertical_edge", "sobel_y"], out=2)
    conv = module.network.conv1
    assert torch.equal(conv.weight[0, 0], torch.tensor(KERNELS["vertical_edge"], dtype=torch.float32))
    assert not conv.weight.requires_grad and not conv.bias.requires_grad
    assert module.network.head.weight.requires_grad
    rgb = classifier(["laplacian"], out=1, channels=3).network.conv1.weight
    assert torch.allclose(rgb.sum(dim=1)[0], torch.tensor(KERNELS["laplacian"], dtype=torch.float32))


def test_fixed_first_layer_must_fit_the_first_conv():
    with pytest.raises(
        CnnpipeError,
        match=r"model.fixed_first_layer: 2 kernel\(s\) of 3x3 need a first conv layer "
        r"with out: 2 and kernel: 3, not out: 4",
    ):
        classifier(["vertical_edge", "sobel_x"], out=4)
    with pytest.raises(CnnpipeError, match="unknown kernel 'edges'"):
        classifier(["edges"], out=1)


def test_a_16_bit_image_is_scaled_not_clipped(tmp_path):
    pixels = np.array([[0, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(pixels).save(tmp_path / "deep.png")  # PIL writes mode I;16 as a 16-bit PNG
    assert read_greyscale(tmp_path / "deep.png").tolist() == [[0, 128, 255]]
