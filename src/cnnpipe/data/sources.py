"""Where images come from: torchvision's data sets (mirrors first), a folder of class subfolders, an archive.

torchvision's come as uint8 [N, H, W, C] arrays with int64 labels and class names, split into train and test;
image folders and archives as file lists (`imagefolder.py`), which `pull` decodes straight into the store and
`load` into memory. `pull` then splits a seeded, stratified validation set off the training part.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import datasets
from torchvision.datasets.utils import check_integrity, extract_archive

from cnnpipe.config import DataConfig
from cnnpipe.console import note
from cnnpipe.data import imagefolder
from cnnpipe.data.archive import unpack
from cnnpipe.data.decode_pool import DecodePool
from cnnpipe.data.imagefolder import FileSplit, Listing
from cnnpipe.data.splits import class_mapping, stratified_mask
from cnnpipe.data.store import Split
from cnnpipe.errors import CnnpipeError

FOLDER_SOURCES = ("imagefolder", "archive")  # decoded from image files; the others come as arrays
# Debian's dataset-fashion-mnist package recompresses torchvision's files: the .gz MD5s differ, the
# decompressed contents are the same. These are the SHA-256 sums of the decompressed files.
CONTENT_SHA256 = {
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}
_TORCHVISION = {"fashion-mnist": datasets.FashionMNIST, "mnist": datasets.MNIST, "cifar10": datasets.CIFAR10}


@dataclass(frozen=True)
class Images:
    train: Split
    test: Split
    classes: list[str]


# ---- torchvision data sets ------------------------------------------------------------------------------


def _raw_files(source: str) -> list[tuple[str, str]]:
    """The files torchvision reads for `source`, with the MD5 sums torchvision lists for them."""
    dataset = _TORCHVISION[source]
    if source == "cifar10":
        return [(dataset.filename, dataset.tgz_md5)]
    return [(Path(name).name, md5) for name, md5 in dataset.resources]


def _raw_folder(source: str, root: Path) -> Path:
    return root if source == "cifar10" else root / _TORCHVISION[source].__name__ / "raw"


def _verified(path: Path, source: str, md5: str) -> bool:
    """torchvision's MD5 of the file, or (for a recompressed .gz) the SHA-256 of its decompressed content."""
    if check_integrity(str(path), md5):
        return True
    expected = CONTENT_SHA256.get(source, {}).get(path.name)
    if expected is None:
        return False
    try:
        with gzip.open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest() == expected
    except (OSError, EOFError):  # a truncated or non-gzip file
        return False


def _copy_from_mirror(source: str, mirrors: list[Path], root: Path) -> bool:
    """Unpacks the first mirror whose files all pass the checksums where torchvision reads them.
    MNIST and Fashion-MNIST share file names, so a name alone proves nothing."""
    files = _raw_files(source)
    for mirror in mirrors:
        if not all((mirror / name).is_file() for name, _ in files):
            continue
        if not all(_verified(mirror / name, source, md5) for name, md5 in files):
            note(f"{mirror}: files named like {source}'s fail its checksums; skipped")
            continue
        for name, _ in files:
            _unpack_replacing(mirror / name, _raw_folder(source, root))
        return True
    return False


def _unpack_replacing(archive: Path, folder: Path) -> None:
    """Unpacks `archive` (.gz decompressed, .tar.gz unpacked) into `folder`, each file renamed into place whole.
    torchvision rewrites its files in place, so a pull sharing `data.cache_dir` with another (two experiments or
    benchmarks at once) read half-written files and died in torchvision's parser."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".unpacking-", dir=folder) as staging:
        extract_archive(archive, staging)
        for path in sorted(Path(staging).rglob("*")):
            if path.is_file():
                target = folder / path.relative_to(staging)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)


def _torchvision_split(source: str, root: Path, train: bool, download: bool) -> tuple[Split, list[str]]:
    dataset = _TORCHVISION[source](str(root), train=train, download=download)
    images = np.asarray(dataset.data, dtype=np.uint8)
    if images.ndim == 3:
        images = images[..., None]
    return Split(images, np.asarray(dataset.targets, dtype=np.int64)), list(dataset.classes)


def load_torchvision(cfg: DataConfig) -> Images:
    """Verified mirror files first, then what an earlier download left in the cache, then a download."""
    root = cfg.cache_dir / cfg.source
    raw = _raw_folder(cfg.source, root)
    # torchvision reads the MNIST family's files as soon as they exist (CIFAR-10's it checks by MD5 first)
    cached = cfg.source != "cifar10" and all((raw / Path(name).stem).is_file() for name, _ in _raw_files(cfg.source))
    found = _copy_from_mirror(cfg.source, cfg.mirrors, root)
    download = cfg.download and not found
    try:
        train, classes = _torchvision_split(cfg.source, root, True, download)
        test, _ = _torchvision_split(cfg.source, root, False, False)
    except (RuntimeError, OSError, ValueError) as exc:  # torchvision's parser: ValueError on an empty file
        mirrors = [str(mirror) for mirror in cfg.mirrors]
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if found or cached:
            raise CnnpipeError(
                f"data.cache_dir: {cfg.source}'s files in {raw} cannot be read ({reason[:200]}); delete that "
                "folder and pull again (and check that data.cache_dir has space)"
            ) from None
        if not download:
            raise CnnpipeError(
                f"data.mirrors: none of {mirrors} holds {cfg.source}'s files with valid checksums, and "
                "data.download is false; add a mirror directory with torchvision's files or allow data.download"
            ) from None
        raise CnnpipeError(
            f"data.download: downloading {cfg.source} failed ({reason}), and none of data.mirrors {mirrors} "
            "holds its files with valid checksums; add a mirror directory with torchvision's files"
        ) from None
    return Images(train, test, classes)


def convert(images: np.ndarray, channels: int | None, size: tuple[int, int] | None) -> np.ndarray:
    """Greyscale <-> RGB (ITU-R 601 luminance, as PIL's "L") and resizing, for data sets that come as arrays."""
    if channels == 3 and images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    elif channels == 1 and images.shape[-1] == 3:
        images = (images @ np.array([0.299, 0.587, 0.114]))[..., None].round().astype(np.uint8)
    if size is not None and tuple(size) != images.shape[1:3]:
        resized = []
        for start in range(0, len(images), 4096):  # chunks: 60k images never become float32 at once
            chunk = np.ascontiguousarray(images[start : start + 4096])
            chunk = torch.from_numpy(chunk).permute(0, 3, 1, 2).float()
            chunk = F.interpolate(chunk, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
            resized.append(chunk.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy())
        images = np.concatenate(resized)
    return images


# ---- image folders and archives -------------------------------------------------------------------------


def image_folder(cfg: DataConfig) -> Path:
    """The folder of class subfolders that data.path names: itself, or the archive's extraction in the cache."""
    if cfg.source == "archive":
        _check_cache_dir(cfg.cache_dir)
        return unpack(cfg.path, cfg.cache_dir, cfg.limits)
    return Path(cfg.path).expanduser()


def _in_memory(part: FileSplit, listing: Listing, cfg: DataConfig, pool: DecodePool) -> Split:
    batches = [images for images, _ in imagefolder.stream(part, listing, cfg, pool, "images").batches]
    return Split(np.concatenate([np.empty((0, *listing.shape), dtype=np.uint8), *batches]), part.labels)


def load_imagefolder(cfg: DataConfig, seed: int) -> Images:
    """An image folder (or archive) in memory, for small data and tests; `pull` streams it into the store."""
    with DecodePool(cfg.workers) as pool:
        listing = imagefolder.list_folder(image_folder(cfg), cfg, seed, pool)
        train, test = (_in_memory(part, listing, cfg, pool) for part in (listing.train, listing.test))
    return Images(train, test, listing.classes)


# ---- common to all sources ------------------------------------------------------------------------------


def select_classes(data: Images, wanted: list[str]) -> Images:
    """Keeps `wanted` classes in the given order, labels renumbered 0..k-1."""
    if not wanted:
        return data
    mapping = class_mapping(data.classes, wanted)

    def subset(split: Split) -> Split:
        keep = mapping[split.labels] >= 0
        return Split(split.images[keep], mapping[split.labels[keep]])

    return Images(subset(data.train), subset(data.test), list(wanted))


def stratified_split(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Moves `stratified_mask`'s part to the second split; the order within each part is kept."""
    mask = stratified_mask(split.labels, fraction, seed)
    return Split(split.images[~mask], split.labels[~mask]), Split(split.images[mask], split.labels[mask])


def _check_cache_dir(cache_dir: Path) -> None:
    """Downloads and extractions go to data.cache_dir: one that is no writable folder is refused up front."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=cache_dir).close()
    except OSError as exc:
        raise CnnpipeError(
            f"data.cache_dir: {cache_dir} is not a writable folder ({exc.strerror or exc}); set data.cache_dir to one"
        ) from None


def load(cfg: DataConfig, seed: int) -> Images:
    """The configured source in memory as train/test images with classes, channels and size as configured."""
    if cfg.source in FOLDER_SOURCES:
        data = load_imagefolder(cfg, seed)
    else:
        _check_cache_dir(cfg.cache_dir)  # torchvision downloads or unpacks into it
        data = load_torchvision(cfg)
        train, test = (
            Split(convert(split.images, cfg.channels, cfg.image_size), split.labels)
            for split in (data.train, data.test)
        )
        data = Images(train, test, data.classes)
    return select_classes(data, cfg.classes)
