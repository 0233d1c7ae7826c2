"""DVC stage `pull`: the images of data.source as a compact store with a seeded, stratified validation split."""

from pathlib import Path

from rich.console import Console

from cnnpipe import paths
from cnnpipe.config import Params
from cnnpipe.data import sources
from cnnpipe.data.store import Manifest, Split, save_store


def run(params: Params, out: Path = paths.PULLED) -> Manifest:
    data = sources.load(params.data, params.seed)
    train, val = sources.stratified_split(data.train, params.data.val_fraction, params.seed)
    splits: dict[str, Split] = {"train": train, "val": val, "test": data.test}
    manifest = save_store(out, splits, data.classes, params.data.source, params.seed, params.data.val_fraction)
    console = Console(soft_wrap=True)  # the class list stays on one line
    for name, count in manifest.counts.items():
        console.print(f"{name:>5}: {count:6d} images {list(manifest.shape)}")
    console.print(f"{manifest.num_classes} classes: {', '.join(manifest.classes)} -> {out}")
    return manifest
