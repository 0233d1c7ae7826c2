"""Small real image folders and archives, written to temporary directories for the tests."""

from __future__ import annotations

import io
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

MIXED = ("png", "jpeg", "bmp")


def make_image_folder(
    root: Path,
    classes=("cat", "dog"),
    per_class: int = 6,
    size=(12, 10),
    mode: str = "RGB",
    fmt: str | tuple[str, ...] = "png",
) -> Path:
    """`root`/CLASS/INDEX.EXT images of `size` (H, W) in `mode` "RGB" or "L"; `fmt` is a PIL format, or a
    tuple of them used in turn. Class i has brightness 120 i + 0..59, so the classes are learnable."""
    rng = np.random.default_rng(0)
    formats = (fmt,) if isinstance(fmt, str) else fmt
    for label, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            shape = (*size, 3) if mode == "RGB" else tuple(size)
            pixels = (rng.integers(0, 60, shape) + 120 * label).clip(0, 255).astype(np.uint8)
            image_format = formats[index % len(formats)]
            suffix = "jpg" if image_format == "jpeg" else image_format
            Image.fromarray(pixels).save(folder / f"{index}.{suffix}", image_format)
    return root


def make_archive(folder: Path, archive: Path) -> Path:
    """`folder` packed as .zip or .tar.gz (by `archive`'s suffix) under one top-level directory."""
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive, "w") as bundle:
            for path in sorted(folder.rglob("*")):
                bundle.write(path, Path(folder.name) / path.relative_to(folder))
    else:
        with tarfile.open(archive, "w:gz") as bundle:
            bundle.add(folder, arcname=folder.name)
    return archive


def add_tar_member(archive: Path, name: str, data: bytes = b"x", symlink_to: str | None = None) -> Path:
    """A .tar.gz with one member of the given (possibly malicious) name: a file, or a symbolic link."""
    with tarfile.open(archive, "w:gz") as bundle:
        info = tarfile.TarInfo(name)
        if symlink_to is not None:
            info.type, info.linkname = tarfile.SYMTYPE, symlink_to
            bundle.addfile(info)
        else:
            info.size = len(data)
            bundle.addfile(info, io.BytesIO(data))
    return archive


def bomb_png(path: Path, width: int, height: int) -> Path:
    """A real black bilevel PNG of `width` x `height`: a few kB on disk that decode to width x height pixels."""
    row = b"\x00" + bytes((width + 7) // 8)  # filter byte, then the packed bits
    packer = zlib.compressobj(9)
    pixels = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))
    return path


def zip_bomb(path: Path, megabytes: int = 1100) -> Path:
    """A zip of about 1 MiB whose one image member extracts to `megabytes` MiB of zeros."""
    zeros = bytes(1 << 20)
    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as bundle,
        bundle.open("pets/cat/0.png", "w", force_zip64=True) as member,
    ):
        for _ in range(megabytes):
            member.write(zeros)
    return path


def patch_zip_member(archive: Path, flag_bits: int = 0, method: int | None = None) -> Path:
    """Sets bits in the first member's flags (1: encrypted) or its compression method (9: deflate64), in both its
    local and its central header: zipfile cannot write such members itself."""
    data = bytearray(archive.read_bytes())
    local, central = data.find(b"PK\x03\x04"), data.find(b"PK\x01\x02")
    data[local + 6] |= flag_bits
    data[central + 8] |= flag_bits
    if method is not None:
        data[local + 8 : local + 10] = data[central + 10 : central + 12] = struct.pack("<H", method)
    archive.write_bytes(bytes(data))
    return archive


SHAPES = ("circle", "square", "triangle")


def make_shapes_folder(root: Path, size: int, per_class: int = 60, fmt: str = "png", seed: int = 0) -> Path:
    """`root`/SHAPE/INDEX.EXT: an RGB picture of `size` x `size` per file, one bright filled circle, square or
    triangle of random size, place and colour on a dark noisy background. The class is the outline alone (every
    class has the same colours and brightness), so a network must learn shapes; `fmt` "jpeg" writes JPEGs."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    for shape in SHAPES:
        (root / shape).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            background = rng.integers(0, 90, 3) + rng.integers(-15, 16, (size, size, 3))
            image = Image.fromarray(background.clip(0, 255).astype(np.uint8))
            colour = tuple(int(value) for value in rng.integers(150, 256, 3))
            radius = rng.uniform(0.2, 0.35) * size
            x, y = rng.uniform(radius, size - radius, 2)
            draw = ImageDraw.Draw(image)
            if shape == "circle":
                draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour)
            elif shape == "square":
                draw.rectangle((x - radius, y - radius, x + radius, y + radius), fill=colour)
            else:
                draw.polygon([(x, y - radius), (x - radius, y + radius), (x + radius, y + radius)], fill=colour)
            suffix = "jpg" if fmt == "jpeg" else fmt
            image.save(root / shape / f"{index}.{suffix}", fmt.upper())
    return root
