"""Small real image folders and archives, written to temporary directories for the tests."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image


def make_image_folder(
    root: Path,
    classes=("cat", "dog"),
    per_class: int = 6,
    size=(12, 10),
    mode: str = "RGB",
    formats=("png", "jpeg", "bmp"),
) -> Path:
    """Class subfolders of images in several formats; each class has its own brightness, so it is learnable."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            channels = 3 if mode == "RGB" else None
            shape = (size[0], size[1], channels) if channels else size
            pixels = (rng.integers(0, 60, shape) + 120 * label).clip(0, 255).astype(np.uint8)
            fmt = formats[index % len(formats)]
            Image.fromarray(pixels, mode=mode).save(folder / f"{index}.{'jpg' if fmt == 'jpeg' else fmt}", fmt)
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


def add_tar_member(archive: Path, name: str, data: bytes = b"x") -> Path:
    """A .tar.gz with one member of the given (possibly malicious) name."""
    with tarfile.open(archive, "w:gz") as bundle:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        bundle.addfile(info, io.BytesIO(data))
    return archive
