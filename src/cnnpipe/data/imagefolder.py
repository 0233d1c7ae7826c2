"""Image folders (`folder`/CLASS/IMAGE, or `folder`/{train,test}/CLASS/IMAGE) as file lists with labels.

Everything is decided on the file lists before the pixels are read: every header checked, the channels chosen,
the size of every image after decoding, the test split (a seeded, stratified IMAGEFOLDER_TEST_FRACTION of every
class when there are no train/ and test/ subfolders) and the class subset. `pull` then decodes each split
straight into the store, so only a batch of images is ever in memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cnnpipe.config import DataConfig
from cnnpipe.console import note
from cnnpipe.data.decode import decode
from cnnpipe.data.decode_pool import DecodePool
from cnnpipe.data.splits import class_mapping, stratified_mask
from cnnpipe.data.store import SplitStream
from cnnpipe.errors import CnnpipeError
from cnnpipe.outputs import identity

IMAGEFOLDER_TEST_FRACTION = 0.2  # an imagefolder without train/ and test/ subfolders gives 20% to test
KEY = "data.path"  # the setting every error about a file names


@dataclass(frozen=True)
class FileSplit:
    files: list[str]
    labels: np.ndarray  # int64 [N]

    def take(self, mask: np.ndarray) -> FileSplit:
        return FileSplit([self.files[index] for index in np.flatnonzero(mask)], self.labels[mask])

    def split(self, fraction: float, seed: int) -> tuple[FileSplit, FileSplit]:
        """The rest and a seeded, stratified `fraction` of every class, each in file order."""
        mask = stratified_mask(self.labels, fraction, seed)
        return self.take(~mask), self.take(mask)


@dataclass(frozen=True)
class Listing:
    train: FileSplit
    test: FileSplit
    classes: list[str]
    channels: int
    shape: tuple[int, int, int]  # [H, W, C] of every image once decoded

    def select(self, wanted: list[str]) -> Listing:
        """Keeps `wanted` classes in the given order, labels renumbered 0..k-1."""
        if not wanted:
            return self
        mapping = class_mapping(self.classes, wanted)

        def subset(part: FileSplit) -> FileSplit:
            kept = part.take(mapping[part.labels] >= 0)
            return FileSplit(kept.files, mapping[kept.labels])

        return Listing(subset(self.train), subset(self.test), list(wanted), self.channels, self.shape)


def _broken(link: str) -> CnnpipeError:
    """A broken symbolic link is refused: it would drop a class folder or an image without a word."""
    return CnnpipeError(f"{KEY}: {link} is a broken symbolic link (to {os.readlink(link)}); fix it or remove it")


def _unlistable(folder: Path | str, exc: OSError) -> CnnpipeError:
    return CnnpipeError(f"{KEY}: cannot list {exc.filename or folder}: {exc.strerror or exc}")


def _class_dirs(folder: Path) -> list[Path]:
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise _unlistable(folder, exc) from None
    if broken := next((entry for entry in entries if entry.is_symlink() and not entry.exists()), None):
        raise _broken(str(broken))
    return [entry for entry in entries if entry.is_dir() and not entry.name.startswith(".")]


def _files(class_dir: Path) -> list[tuple[tuple[str, ...], str]]:
    """(parts below `class_dir`, path) of every file at any depth, sorted by parts as pathlib sorts paths. A link to
    a folder is followed, as a linked class folder is (skipping it would drop its images without a word); one back
    to a folder it is in would never end, and is refused. os.scandir's entries know their type without a stat: a
    million files list in seconds, where pathlib takes minutes."""
    found, folders = [], [((), str(class_dir), {identity(class_dir)})]
    while folders:
        parts, folder, ancestors = folders.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.is_symlink() and not os.path.exists(entry.path):
                        raise _broken(entry.path)
                    if entry.is_dir():
                        if (seen := identity(entry.path)) in ancestors:  # a stat per folder, not per file
                            raise CnnpipeError(
                                f"{KEY}: {entry.path} is a link to {os.path.realpath(entry.path)}, a folder it is in "
                                "(a loop); remove the link"
                            )
                        folders.append(((*parts, entry.name), entry.path, ancestors | {seen}))
                    elif entry.is_file():
                        found.append(((*parts, entry.name), entry.path))
        except OSError as exc:
            raise _unlistable(folder, exc) from None
    return sorted(found)


def _is_image(parts: tuple[str, ...], extensions: set[str]) -> bool:
    """By suffix; hidden files and folders (macOS's ._NAME.png resource forks, .ipynb_checkpoints) are not data."""
    return os.path.splitext(parts[-1])[1].lower() in extensions and not any(part.startswith(".") for part in parts)


def _image_files(folder: Path) -> dict[str, list[str]]:
    """Class name (sorted subfolder names) -> its image files; other files are skipped with a note."""
    extensions = set(Image.registered_extensions())
    files = {}
    for class_dir in _class_dirs(folder):
        every = _files(class_dir)
        files[class_dir.name] = [path for parts, path in every if _is_image(parts, extensions)]
        if skipped := len(every) - len(files[class_dir.name]):
            note(f"skipped {skipped} non-image file(s) in {class_dir}")
    if not any(files.values()):
        raise CnnpipeError(f"{KEY}: {folder} holds no class subfolders with images ({folder}/CLASS/IMAGE)")
    if empty := [name for name, images in files.items() if not images]:
        raise CnnpipeError(f"{KEY}: class folder(s) {empty} in {folder} hold no images; add some or remove them")
    return files


def _file_split(files: dict[str, list[str]], classes: list[str]) -> FileSplit:
    paths = [path for name in files for path in files[name]]
    labels = np.repeat([classes.index(name) for name in files], [len(images) for images in files.values()])
    return FileSplit(paths, labels.astype(np.int64))


def _shape(path: str, channels: int, cfg: DataConfig) -> tuple[int, int, int]:
    """[H, W, C] of the first image of a part: every other one must come out the same."""
    return decode(path, channels, cfg.image_size, cfg.limits.max_image_pixels, KEY).shape


def list_folder(folder: Path, cfg: DataConfig, seed: int, pool: DecodePool) -> Listing:
    """The folder's train and test files with labels; every header checked, nothing decoded but one image of each
    part (the size all others must have)."""
    if not folder.is_dir():
        raise CnnpipeError(f"{KEY}: {folder} is not a directory of class subfolders")
    has_splits = (folder / "train").is_dir() and (folder / "test").is_dir()
    parts = {"train": folder / "train", "test": folder / "test"} if has_splits else {"images": folder}
    files = {name: _image_files(where) for name, where in parts.items()}
    classes = list(files["train" if has_splits else "images"])
    if has_splits and (unknown := sorted(set(files["test"]) - set(classes))):
        raise CnnpipeError(f"{KEY}: {folder}/test has class folder(s) {unknown} that {folder}/train lacks")
    every = [path for part in files.values() for images in part.values() for path in images]
    greyscale = pool.all_greyscale(every, cfg.limits.max_image_pixels, KEY)
    channels = cfg.channels or (1 if greyscale else 3)
    shapes = {name: _shape(next(iter(part.values()))[0], channels, cfg) for name, part in files.items()}
    if not has_splits:
        train, test = _file_split(files["images"], classes).split(IMAGEFOLDER_TEST_FRACTION, seed)
        return Listing(train, test, classes, channels, shapes["images"])
    if shapes["train"][:2] != shapes["test"][:2]:
        raise CnnpipeError(
            f"data.image_size: {folder}/train images are {shapes['train'][:2]} (H, W) but test images "
            f"{shapes['test'][:2]}; set data.image_size: [H, W] to resize them"
        )
    train, test = (_file_split(files[name], classes) for name in ("train", "test"))
    return Listing(train, test, classes, channels, shapes["train"])


def stream(part: FileSplit, listing: Listing, cfg: DataConfig, pool: DecodePool, name: str) -> SplitStream:
    """`part` as the store writes it: decoded on `pool` batch by batch, while the store is written."""
    limits = (cfg.limits.max_image_pixels, KEY)
    description, histograms = f"Decoding {name}", name == "train"  # the train split's mean and std
    batches = pool.images(part.files, listing.channels, cfg.image_size, listing.shape, limits, description, histograms)
    return SplitStream(part.labels, listing.shape, batches)
