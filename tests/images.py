"""Small real image folders and archives, written to temporary directories for the tests."""

from __future__ import annotations

import io
import tarfile
import zipfile
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
