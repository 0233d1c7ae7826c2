"""DVC stage `pull`: the images of data.source as a compact store with a seeded, stratified validation split.

Image folders and archives are split on their file lists and decoded on every core straight into the store, a
bounded batch at a time: memory does not grow with the number of images. torchvision's data sets come as arrays.
"""

import numpy as np

from cnnpipe.config import DataConfig, Params
from cnnpipe.console import console
from cnnpipe.data import imagefolder, sources
from cnnpipe.data.decode_pool import DecodePool
from cnnpipe.data.store import Manifest, SplitStream, save_store, write_store
from cnnpipe.errors import CnnpipeError
from cnnpipe.outputs import recover
from cnnpipe.paths import Paths


def _refuse_unusable(labels: dict[str, np.ndarray], classes: list[str], cfg: DataConfig) -> None:
    """Data that training cannot use is refused from the labels alone, before a pixel is decoded and before the
    store is replaced, so the old store stays."""
    key = "data.classes" if cfg.classes else "data.path"
    if len(classes) < 2:
        fix = "list at least 2 in data.classes" if cfg.classes else f"add class folders to {cfg.path}"
        raise CnnpipeError(f"{key}: {len(classes)} class ({', '.join(classes)}); a classifier needs 2 or more: {fix}")
    before = np.bincount(np.concatenate([labels["train"], labels["val"]]), minlength=len(classes))
    left = np.bincount(labels["train"], minlength=len(classes))
    if (left == 0).any():
        name = classes[int(np.argmin(left))]
        raise CnnpipeError(
            f"data.val_fraction: {cfg.val_fraction} moves all {before[classes.index(name)]} training images of "
            f"class {name!r} to the validation split; lower data.val_fraction or add images of {name!r}"
        )
    counts = ", ".join(f"{name}: {count}" for name, count in zip(classes, before, strict=True))
    if not len(labels["val"]):
        raise CnnpipeError(
            f"{key}: the validation split would be empty: data.val_fraction takes images only from a class with "
            f"2 or more training images, and these have {counts}; add images: 2 training images per class at "
            "least (3 per class in a folder without train/ and test/ subfolders)"
        )
    if not len(labels["test"]):
        raise CnnpipeError(
            f"{key}: the test split would be empty: no image of {', '.join(classes)} is set aside for testing; "
            "add images to the test/ subfolder of data.path, or choose classes that have some"
        )


def _pull_folder(params: Params, paths: Paths) -> Manifest:
    cfg = params.data
    with DecodePool(cfg.workers) as pool:
        listing = imagefolder.list_folder(sources.image_folder(cfg), cfg, params.seed, pool).select(cfg.classes)
        train, val = listing.train.split(cfg.val_fraction, params.seed)
        parts = {"train": train, "val": val, "test": listing.test}
        _refuse_unusable({name: part.labels for name, part in parts.items()}, listing.classes, cfg)
        streams: dict[str, SplitStream] = {
            name: imagefolder.stream(part, listing, cfg, pool, name) for name, part in parts.items()
        }
        return write_store(paths.pulled, streams, listing.classes, cfg.source, params.seed, cfg.val_fraction)


def _pull_arrays(params: Params, paths: Paths) -> Manifest:
    cfg = params.data
    data = sources.load(cfg, params.seed)
    train, val = sources.stratified_split(data.train, cfg.val_fraction, params.seed)
    splits = {"train": train, "val": val, "test": data.test}
    _refuse_unusable({name: split.labels for name, split in splits.items()}, data.classes, cfg)
    return save_store(paths.pulled, splits, data.classes, cfg.source, params.seed, cfg.val_fraction)


def run(params: Params, paths: Paths = Paths()) -> Manifest:
    recover(paths.pulled)  # a killed earlier run's staging folders go, a store it had moved aside comes back
    pull = _pull_folder if params.data.source in sources.FOLDER_SOURCES else _pull_arrays
    manifest = pull(params, paths)
    for name, count in manifest.counts.items():
        console.print(f"{name:>5}: {count:6d} images {list(manifest.shape)}")
    console.print(f"{manifest.num_classes} classes: {', '.join(manifest.classes)} -> {paths.pulled}", soft_wrap=True)
    return manifest
