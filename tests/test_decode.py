"""Image decoding on real files: every mode's pixels land on 0..255 by its own range, alpha over black."""

import numpy as np
import pytest
from PIL import Image

from cnnpipe.config import DataConfig
from cnnpipe.data import sources
from cnnpipe.data.decode import GREYSCALE_MODES, decode, read_mode
from cnnpipe.errors import CnnpipeError

LIMIT = 10_000


def pixels(path, channels=1, size=None):
    return decode(path, channels, size, LIMIT, "data.path")


def test_sixteen_bit_png_and_tiff_are_scaled_not_clipped(tmp_path):
    values = np.array([[65535, 32768, 0]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "grey16.png")
    Image.frombytes("I;16B", (3, 1), values.astype(">u2").tobytes()).save(tmp_path / "big-endian.tif")
    Image.fromarray(values.astype(np.int32)).save(tmp_path / "mode-i.tif")  # mode I holding 16-bit data
    for name, mode in (("grey16.png", "I;16"), ("big-endian.tif", "I;16B"), ("mode-i.tif", "I")):
        assert read_mode(tmp_path / name, LIMIT, "data.path") == mode and mode in GREYSCALE_MODES
        assert pixels(tmp_path / name)[..., 0].tolist() == [[255, 128, 0]], name
    assert pixels(tmp_path / "grey16.png", channels=3).tolist() == [[[255] * 3, [128] * 3, [0] * 3]]


def test_sixteen_bit_colour_key_is_transparent(tmp_path):
    Image.fromarray(np.array([[500, 65535]], dtype=np.uint16)).save(tmp_path / "keyed.png", transparency=500)
    assert pixels(tmp_path / "keyed.png")[..., 0].tolist() == [[0, 255]]


def test_float_tiff_in_zero_to_one(tmp_path):
    Image.fromarray(np.array([[1.0, 0.5, 0.25, 0.0]], dtype=np.float32)).save(tmp_path / "float.tif")
    assert pixels(tmp_path / "float.tif")[..., 0].tolist() == [[255, 128, 64, 0]]


def test_palette_bilevel_and_transparent_palette_entries(tmp_path):
    palette = Image.new("P", (3, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255, 10, 200, 30])
    palette.putdata([0, 1, 2])
    palette.save(tmp_path / "palette.png")
    assert pixels(tmp_path / "palette.png", channels=3).tolist() == [[[255, 0, 0], [0, 0, 255], [10, 200, 30]]]
    palette.save(tmp_path / "palette.gif", transparency=1)  # index 1 transparent: black, not its blue
    assert pixels(tmp_path / "palette.gif", channels=3).tolist() == [[[255, 0, 0], [0, 0, 0], [10, 200, 30]]]
    bilevel = Image.new("1", (2, 1))
    bilevel.putpixel((1, 0), 1)
    bilevel.save(tmp_path / "bilevel.png")
    assert pixels(tmp_path / "bilevel.png")[..., 0].tolist() == [[0, 255]]


def test_alpha_is_composited_over_black(tmp_path):
    rgba = np.array([[[200, 100, 50, 255], [200, 100, 50, 128], [200, 100, 50, 0]]], dtype=np.uint8)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert pixels(tmp_path / "rgba.png", channels=3).tolist() == [[[200, 100, 50], [100, 50, 25], [0, 0, 0]]]
    Image.fromarray(rgba[..., [0, 3]]).save(tmp_path / "la.png")  # LA: grey 200 at three alphas
    assert read_mode(tmp_path / "la.png", LIMIT, "data.path") == "LA"
    assert pixels(tmp_path / "la.png")[..., 0].tolist() == [[200, 100, 0]]


def test_cmyk_jpeg_and_ycbcr_tiff_become_rgb(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)  # pure red
    red = pixels(tmp_path / "cmyk.jpg", channels=3).astype(int)
    assert np.abs(red - [255, 0, 0]).max() <= 3
    Image.new("RGB", (4, 4), (30, 160, 220)).convert("YCbCr").save(tmp_path / "ycbcr.tif")
    assert read_mode(tmp_path / "ycbcr.tif", LIMIT, "data.path") == "YCbCr"
    back = pixels(tmp_path / "ycbcr.tif", channels=3).astype(int)
    assert np.abs(back - [30, 160, 220]).max() <= 4  # PIL's RGB -> YCbCr -> RGB round trip is off by up to 3


def test_rgb_to_one_channel_resizing_and_exif_orientation(tmp_path):
    Image.new("RGB", (4, 2), (100, 0, 0)).save(tmp_path / "red.png")
    assert (pixels(tmp_path / "red.png", size=(3, 5)) == 30).all()  # ITU-R 601: 0.299 x 100
    assert pixels(tmp_path / "red.png", size=(3, 5)).shape == (3, 5, 1)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to show
    Image.fromarray(np.array([[65535, 0]], dtype=np.uint16)).save(tmp_path / "sideways.png", exif=exif)
    assert pixels(tmp_path / "sideways.png")[..., 0].tolist() == [[255], [0]]


def test_sixteen_bit_greyscale_folder_pulls_as_one_channel(tmp_path):
    for name, value in (("dark", 4096), ("light", 61440)):
        (tmp_path / "set" / name).mkdir(parents=True)
        for index in range(3):
            Image.fromarray(np.full((4, 4), value, dtype=np.uint16)).save(tmp_path / "set" / name / f"{index}.png")
    data = sources.load(DataConfig(source="imagefolder", path=str(tmp_path / "set")), seed=0)
    assert data.train.images.shape[1:] == (4, 4, 1)
    means = [data.train.images[data.train.labels == label].mean() for label in (0, 1)]
    assert means == [16, 239]  # 4096 / 257 and 61440 / 257, rounded: not 255 and 255


@pytest.mark.parametrize(
    ("values", "found"),
    [([[0, 70000]], "0..70000"), ([[-3, 5]], "-3..5")],
)
def test_mode_i_beyond_sixteen_bits_is_refused(tmp_path, values, found):
    Image.fromarray(np.array(values, dtype=np.int32)).save(tmp_path / "wide.tif")
    with pytest.raises(CnnpipeError, match=rf"data.path: .*wide.tif: image mode I holds values {found}; supported"):
        pixels(tmp_path / "wide.tif")


def test_unsupported_mode_and_too_many_pixels_are_refused_from_the_header(tmp_path):
    Image.new("LAB", (2, 2)).save(tmp_path / "lab.tif")
    with pytest.raises(CnnpipeError, match=r"data.path: .*lab.tif: image mode LAB is not supported; supported: 1, L"):
        read_mode(tmp_path / "lab.tif", LIMIT, "data.path")
    Image.new("L", (200, 60)).save(tmp_path / "wide.png")
    with pytest.raises(CnnpipeError, match=r"wide.png is 200x60 = 12,000 pixels, more than data.limits.max_image"):
        pixels(tmp_path / "wide.png")
