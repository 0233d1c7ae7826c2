"""One image file to uint8 [H, W, C]: every mode scaled onto 0..255 by its own range, or refused by name.

PIL's `convert("L")` clips: a 16-bit image comes out almost all white and a float one black, without a word.
Here 16-bit values are scaled by 255/65535, floats in [0, 1] by 255, alpha is composited over black, and a mode
whose range cannot be known (HSV, LAB, ...) is refused. `pull` reads its image folders with it; it is meant for
any command that reads image files.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from cnnpipe.errors import CnnpipeError

SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # mode I: 32-bit integers, read as 16-bit data
GREYSCALE_MODES = ("1", "L", "LA", *SIXTEEN_BIT_MODES, "F")
COLOUR_MODES = ("RGB", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr")
SUPPORTED_MODES = GREYSCALE_MODES + COLOUR_MODES
UNREADABLE = (OSError, ValueError, SyntaxError, EOFError, struct.error)  # what PIL raises for a damaged file


def _unreadable(path: Path, exc: Exception, key: str) -> CnnpipeError:
    return CnnpipeError(f"{key}: cannot read image {path}: {str(exc) or type(exc).__name__}")


def _checked_mode(image: Image.Image, path: Path, max_pixels: int, key: str) -> None:
    """Refuses a size beyond `max_pixels` and a mode this module cannot scale, from the header alone."""
    width, height = image.size
    if width * height > max_pixels:
        raise CnnpipeError(
            f"{key}: {path} is {width}x{height} = {width * height:,} pixels, more than "
            f"data.limits.max_image_pixels ({max_pixels:,}); raise data.limits.max_image_pixels to read it"
        )
    if image.mode not in SUPPORTED_MODES:
        raise CnnpipeError(
            f"{key}: {path}: image mode {image.mode} is not supported; supported: {', '.join(SUPPORTED_MODES)}"
        )


@contextmanager
def _opened(path: Path, max_pixels: int, key: str) -> Iterator[Image.Image]:
    """The image with its header read and checked; what PIL raises on a damaged file, then or while the caller
    decodes it, is said in one line. PIL's own bomb check (a warning, then an error that is no OSError, at a
    fixed size) is off for the call, and `max_pixels` checked instead: on the image's size, which its frames and
    tiles fit in (PIL grows a GIF's size to a larger frame when it opens it)."""
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(path) as image:
            _checked_mode(image, path, max_pixels, key)
            yield image
    except UNREADABLE as exc:
        raise _unreadable(path, exc, key) from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit  # other code keeps PIL's default


def read_mode(path: Path, max_pixels: int, key: str) -> str:
    """The image's mode from its header alone: checks every file and picks 1 or 3 channels before decoding."""
    with _opened(path, max_pixels, key) as image:
        return image.mode


def _scaled(image: Image.Image, path: Path, key: str) -> Image.Image:
    """A 16-bit (0..65535) or float (0..1) image as 8-bit L, or LA where a PNG marks one value transparent.
    Values outside that range cannot be scaled without guessing, so they are refused with the range found."""
    values = np.asarray(image)
    top = 1 if image.mode == "F" else 65535
    low, high = values.min(), values.max()
    if not (low >= 0 and high <= top):  # NaN fails this too
        raise CnnpipeError(
            f"{key}: {path}: image mode {image.mode} holds values {low:g}..{high:g}; supported are 0..{top} "
            f"({'floats' if top == 1 else '16-bit integers'}), scaled onto 0..255"
        )
    if image.mode == "F":
        return Image.fromarray(np.rint(values * 255).astype(np.uint8))
    grey = ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)  # round(v x 255 / 65535)
    transparent = image.info.get("transparency")
    if transparent is None:
        return Image.fromarray(grey)
    return Image.fromarray(np.stack([grey, np.where(values == transparent, 0, 255).astype(np.uint8)], axis=-1))


def _eight_bit(image: Image.Image, path: Path, key: str) -> Image.Image:
    """L, LA, RGB or RGBA with 8 bits a channel; a palette or a colour key that marks pixels transparent
    becomes an alpha channel."""
    if image.mode in (*SIXTEEN_BIT_MODES, "F"):
        return _scaled(image, path, key)
    transparent = image.info.get("transparency") is not None
    if image.mode in ("1", "L"):
        return image.convert("LA" if transparent else "L")
    if image.mode in ("LA", "RGBA"):
        return image
    if image.mode in ("P", "PA") or transparent:
        return image.convert("RGBA")
    return image.convert("RGB")  # RGB, RGBX, CMYK, YCbCr


def _over_black(image: Image.Image) -> Image.Image:
    """Alpha composited over black (colour x alpha / 255), as the README says: the network sees no alpha, so a
    transparent pixel becomes black and a half-transparent one half as bright, never its hidden colour."""
    if image.mode not in ("LA", "RGBA"):
        return image
    pixels = np.asarray(image).astype(np.uint16)
    colour = ((pixels[..., :-1] * pixels[..., -1:] + 127) // 255).astype(np.uint8)  # rounded
    return Image.fromarray(colour[..., 0] if image.mode == "LA" else colour)


def decode(path: Path, channels: int, size: tuple[int, int] | None, max_pixels: int, key: str) -> np.ndarray:
    """The image as uint8 [H, W, `channels`] (1: ITU-R 601 luminance, as PIL's "L"), upright as its EXIF
    orientation says, resized to `size` (H, W) when given. Errors name `key`, the setting that gave `path`."""
    with _opened(path, max_pixels, key) as image:
        image.load()
        flat = _over_black(_eight_bit(ImageOps.exif_transpose(image), path, key))
    flat = flat.convert("L" if channels == 1 else "RGB")
    if size is not None:
        flat = flat.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    array = np.asarray(flat)
    return array[..., None] if array.ndim == 2 else array
