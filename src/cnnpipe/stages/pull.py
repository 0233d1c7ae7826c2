"""DVC stage `pull`: the images of data.source as a compact store with a seeded, stratified validation split."""

import numpy as np

from cnnpipe.config import DataConfig, Params
from cnnpipe.console import console
from cnnpipe.data import sources
from cnnpipe.data.store import Manifest, Split, save_store
from cnnpipe.errors import CnnpipeError
from cnnpipe.outputs import recover
from cnnpipe.paths import Paths


def _refuse_unusable(splits: dict[str, Split], classes: list[str], cfg: DataConfig) -> None:
    """Data that training cannot use is refused here, before the store is replaced, so the old store stays."""
    key = "data.classes" if cfg.classes else "data.path"
    if len(classes) < 2:
        fix = "list at least 2 in data.classes" if cfg.classes else f"add class folders to {cfg.path}"
        raise CnnpipeError(f"{key}: {len(classes)} class ({', '.join(classes)}); a classifier needs 2 or more: {fix}")
    before = np.bincount(np.concatenate([splits["train"].labels, splits["val"].labels]), minlength=len(classes))
    left = np.bincount(splits["train"].labels, minlength=len(classes))
    if (left == 0).any():
        name = classes[int(np.argmin(left))]
        raise CnnpipeError(
            f"data.val_fraction: {cfg.val_fraction} moves all {before[classes.index(name)]} training images of "
            f"class {name!r} to the validation split; lower data.val_fraction or add images of {name!r}"
        )
    counts = ", ".join(f"{name}: {count}" for name, count in zip(classes, before, strict=True))
    if not len(splits["val"]):
        raise CnnpipeError(
            f"{key}: the validation split would be empty: data.val_fraction takes images only from a class with "
            f"2 or more training images, and these have {counts}; add images: 2 training images per class at "
            "least (3 per class in a folder without train/ and test/ subfolders)"
        )
    if not len(splits["test"]):
        raise CnnpipeError(
            f"{key}: the test split would be empty: no image of {', '.join(classes)} is set aside for testing; "
            "add images to the test/ subfolder of data.path, or choose classes that have some"
        )


def run(params: Params, paths: Paths = Paths()) -> Manifest:
    out = paths.pulled
    recover(out)  # what a killed earlier run left: its staging folders go, a store it had moved aside comes back
    data = sources.load(params.data, params.seed)
    train, val = sources.stratified_split(data.train, params.data.val_fraction, params.seed)
    splits: dict[str, Split] = {"train": train, "val": val, "test": data.test}
    _refuse_unusable(splits, data.classes, params.data)
    manifest = save_store(out, splits, data.classes, params.data.source, params.seed, params.data.val_fraction)
    for name, count in manifest.counts.items():
        console.print(f"{name:>5}: {count:6d} images {list(manifest.shape)}")
    console.print(f"{manifest.num_classes} classes: {', '.join(manifest.classes)} -> {out}", soft_wrap=True)
    return manifest
