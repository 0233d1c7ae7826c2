"""Where images come from: torchvision's data sets (mirrors first), a folder of class subfolders, an archive.

Every source ends as uint8 [N, H, W, C] arrays with int64 labels and class names, split into train and
test; `pull` then splits a seeded, stratified validation set off the training part.
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
from PIL import Image
from rich.progress import track
from torchvision import datasets
from torchvision.datasets.utils import check_integrity, extract_archive

from cnnpipe.config import DataConfig
from cnnpipe.console import console, note
from cnnpipe.data.archive import unpack
from cnnpipe.data.decode import GREYSCALE_MODES, decode, read_mode
from cnnpipe.data.store import Split
from cnnpipe.errors import CnnpipeError

IMAGEFOLDER_TEST_FRACTION = 0.2  # an imagefolder without train/ and test/ subfolders gives 20% to test
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
        _raw_folder(source, root).mkdir(parents=True, exist_ok=True)
        for name, _ in files:
            extract_archive(mirror / name, _raw_folder(source, root))  # .gz decompressed, .tar.gz unpacked
        return True
    return False


def _torchvision_split(source: str, root: Path, train: bool, download: bool) -> tuple[Split, list[str]]:
    dataset = _TORCHVISION[source](str(root), train=train, download=download)
    images = np.asarray(dataset.data, dtype=np.uint8)
    if images.ndim == 3:
        images = images[..., None]
    return Split(images, np.asarray(dataset.targets, dtype=np.int64)), list(dataset.classes)


def load_torchvision(cfg: DataConfig) -> Images:
    """Verified mirror files first, then what an earlier download left in the cache, then a download."""
    root = cfg.cache_dir / cfg.source
    found = _copy_from_mirror(cfg.source, cfg.mirrors, root)
    download = cfg.download and not found
    try:
        train, classes = _torchvision_split(cfg.source, root, True, download)
        test, _ = _torchvision_split(cfg.source, root, False, False)
    except (RuntimeError, OSError) as exc:
        mirrors = [str(mirror) for mirror in cfg.mirrors]
        if not download:
            raise CnnpipeError(
                f"data.mirrors: none of {mirrors} holds {cfg.source}'s files with valid checksums, and "
                "data.download is false; add a mirror directory with torchvision's files or allow data.download"
            ) from None
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
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


# ---- image folders --------------------------------------------------------------------------------------


def _entries(folder: Path, recursive: bool = False) -> list[Path]:
    """The entries of `folder` (at every depth when `recursive`), sorted. A broken symbolic link is refused: it
    would drop a class folder or an image without a word."""
    try:
        entries = sorted(folder.rglob("*") if recursive else folder.iterdir())
    except OSError as exc:
        raise CnnpipeError(f"data.path: cannot list {exc.filename or folder}: {exc.strerror or exc}") from None
    if broken := next((entry for entry in entries if entry.is_symlink() and not entry.exists()), None):
        raise CnnpipeError(
            f"data.path: {broken} is a broken symbolic link (to {os.readlink(broken)}); fix it or remove it"
        )
    return entries


def _is_image(path: Path, class_dir: Path, extensions: set[str]) -> bool:
    """By suffix; hidden files and folders (macOS's ._NAME.png resource forks, .ipynb_checkpoints) are not data."""
    hidden = any(part.startswith(".") for part in path.relative_to(class_dir).parts)
    return path.suffix.lower() in extensions and not hidden


def _image_files(folder: Path) -> dict[str, list[Path]]:
    """Class name (sorted subfolder names) -> its image files; other files are skipped with a note."""
    extensions = set(Image.registered_extensions())
    class_dirs = [entry for entry in _entries(folder) if entry.is_dir() and not entry.name.startswith(".")]
    files = {}
    for class_dir in class_dirs:
        every = [path for path in _entries(class_dir, recursive=True) if path.is_file()]
        files[class_dir.name] = [path for path in every if _is_image(path, class_dir, extensions)]
        if skipped := len(every) - len(files[class_dir.name]):
            note(f"skipped {skipped} non-image file(s) in {class_dir}")
    if not any(files.values()):
        raise CnnpipeError(f"data.path: {folder} holds no class subfolders with images ({folder}/CLASS/IMAGE)")
    if empty := [name for name, images in files.items() if not images]:
        raise CnnpipeError(f"data.path: class folder(s) {empty} in {folder} hold no images; add some or remove them")
    return files


def _read_images(files: dict[str, list[Path]], classes: list[str], channels: int, cfg: DataConfig, what: str) -> Split:
    paths = [(path, classes.index(name)) for name, images in files.items() for path in images]
    images = []
    for path, _ in track(paths, description=f"Reading {what}", console=console):
        image = decode(path, channels, cfg.image_size, cfg.limits.max_image_pixels, "data.path")
        if images and image.shape != images[0].shape:
            raise CnnpipeError(
                f"data.image_size: images differ in size ({path} is {image.shape[0]}x{image.shape[1]}, others "
                f"{images[0].shape[0]}x{images[0].shape[1]}, H x W); set data.image_size: [H, W] to resize them"
            )
        images.append(image)
    return Split(np.stack(images), np.array([label for _, label in paths], dtype=np.int64))


def load_imagefolder(folder: Path, cfg: DataConfig, seed: int) -> Images:
    """`folder`/CLASS/IMAGE, or `folder`/{train,test}/CLASS/IMAGE; without the latter a seeded, stratified
    IMAGEFOLDER_TEST_FRACTION of every class becomes the test split."""
    if not folder.is_dir():
        raise CnnpipeError(f"data.path: {folder} is not a directory of class subfolders")
    has_splits = (folder / "train").is_dir() and (folder / "test").is_dir()
    parts = {"train": folder / "train", "test": folder / "test"} if has_splits else {"images": folder}
    files = {name: _image_files(where) for name, where in parts.items()}
    classes = list(files["train" if has_splits else "images"])
    if has_splits and (unknown := sorted(set(files["test"]) - set(classes))):
        raise CnnpipeError(f"data.path: {folder}/test has class folder(s) {unknown} that {folder}/train lacks")
    every = [path for part in files.values() for images in part.values() for path in images]
    # Every header first (mode, size): a bad file is refused before minutes of decoding, not after.
    modes = [read_mode(path, cfg.limits.max_image_pixels, "data.path") for path in every]
    channels = cfg.channels or (1 if all(mode in GREYSCALE_MODES for mode in modes) else 3)
    splits = {name: _read_images(part, classes, channels, cfg, f"{parts[name].name}/") for name, part in files.items()}
    if not has_splits:
        train, test = stratified_split(splits["images"], IMAGEFOLDER_TEST_FRACTION, seed)
        return Images(train, test, classes)
    train, test = splits["train"], splits["test"]
    if train.images.shape[1:3] != test.images.shape[1:3]:
        raise CnnpipeError(
            f"data.image_size: {folder}/train images are {train.images.shape[1:3]} (H, W) but test images "
            f"{test.images.shape[1:3]}; set data.image_size: [H, W] to resize them"
        )
    return Images(train, test, classes)


def load_archive(cfg: DataConfig, seed: int) -> Images:
    return load_imagefolder(unpack(cfg.path, cfg.cache_dir, cfg.limits), cfg, seed)


# ---- common to all sources ------------------------------------------------------------------------------


def select_classes(data: Images, wanted: list[str]) -> Images:
    """Keeps `wanted` classes in the given order, labels renumbered 0..k-1."""
    if not wanted:
        return data
    if unknown := [name for name in wanted if name not in data.classes]:
        raise CnnpipeError(f"data.classes: unknown class {unknown[0]!r}; valid: {', '.join(data.classes)}")
    mapping = np.full(len(data.classes), -1)
    mapping[[data.classes.index(name) for name in wanted]] = np.arange(len(wanted))

    def subset(split: Split) -> Split:
        keep = mapping[split.labels] >= 0
        return Split(split.images[keep], mapping[split.labels[keep]])

    return Images(subset(data.train), subset(data.test), list(wanted))


def stratified_split(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Moves round(`fraction` x size) of every class to the second part (at least one image of a class with
    two or more), chosen by a generator seeded with `seed`; the order within each part is kept."""
    rng = np.random.default_rng(seed)
    held_out = [np.empty(0, dtype=np.int64)]
    for label in np.unique(split.labels):
        members = rng.permutation(np.flatnonzero(split.labels == label))
        count = max(1, round(len(members) * fraction)) if len(members) > 1 else 0
        held_out.append(members[:count])
    mask = np.zeros(len(split.labels), dtype=bool)
    mask[np.concatenate(held_out)] = True
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
    """The configured source as train/test images with classes, channels and size as configured."""
    if cfg.source != "imagefolder":  # the others download or extract into it
        _check_cache_dir(cfg.cache_dir)
    if cfg.source == "imagefolder":
        data = load_imagefolder(Path(cfg.path).expanduser(), cfg, seed)
    elif cfg.source == "archive":
        data = load_archive(cfg, seed)
    else:
        data = load_torchvision(cfg)
        train, test = (
            Split(convert(split.images, cfg.channels, cfg.image_size), split.labels)
            for split in (data.train, data.test)
        )
        data = Images(train, test, data.classes)
    return select_classes(data, cfg.classes)
