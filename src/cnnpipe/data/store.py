"""The image store: a few compact files per data set, never one file per image.

`{split}_images.npy` holds uint8 [N, H, W, C] (the layout albumentations works in), `{split}_labels.npy`
int64 [N], and `manifest.json` the class names, shape, counts, checksums and the train split's per-channel
mean and std, which the model uses to normalise its input. The images are written batch by batch and read
memory-mapped, so neither side holds a whole split in memory.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cnnpipe.errors import CnnpipeError
from cnnpipe.outputs import replaced_atomically

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int64 [N]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Manifest:
    source: str
    classes: list[str]
    shape: tuple[int, int, int]  # [C, H, W]
    counts: dict[str, int]
    class_counts: dict[str, list[int]]
    checksums: dict[str, str]  # file name -> sha256
    mean: list[float]
    std: list[float]
    seed: int
    val_fraction: float

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def channel_histogram(images: np.ndarray) -> np.ndarray:
    """[C, 256] counts of every uint8 value per channel: exact mean and std in any batch order, and cheap enough to
    take beside decoding (bincount counts in int64: 2 MB of values at a time, not 8x the batch)."""
    pixels = images.reshape(-1, images.shape[-1])
    counts = np.zeros((pixels.shape[1], 256), dtype=np.int64)
    for start in range(0, len(pixels), 1 << 18):
        for channel, values in enumerate(pixels[start : start + (1 << 18)].T):
            counts[channel] += np.bincount(values, minlength=256)
    return counts


def _mean_std(histogram: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units."""
    values = np.arange(256) / 255
    count = histogram.sum(axis=1)
    mean = (histogram * values).sum(axis=1) / count
    std = np.sqrt(np.maximum((histogram * values**2).sum(axis=1) / count - mean**2, 1e-12))
    return mean.round(6).tolist(), std.round(6).tolist()


Batch = tuple[np.ndarray, np.ndarray | None]  # uint8 [n, H, W, C] and its channel_histogram, None if not taken


@dataclass(frozen=True)
class SplitStream:
    """A split to write batch by batch: its labels, every image's [H, W, C], and the batches in order. A producer
    that decodes on other cores takes the histograms there; the writer takes the missing ones of the train split."""

    labels: np.ndarray
    image_shape: tuple[int, int, int]
    batches: Iterable[Batch]


def array_batches(images: np.ndarray, batch: int = 4096) -> Iterator[Batch]:
    for start in range(0, len(images), batch):
        yield np.ascontiguousarray(images[start : start + batch]), None


def _write_images(path: Path, split: SplitStream, histogram: np.ndarray | None) -> str:
    """Streams `split`'s images into a .npy file opened at its final size, adding their channel histograms to
    `histogram` when given; returns the file's SHA-256, computed from the very bytes written. Only a batch at a
    time is in memory."""
    shape = (len(split.labels), *split.image_shape)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": shape}
    )
    digest = hashlib.sha256(header.getvalue())
    written = 0
    with path.open("wb") as handle:
        handle.write(header.getvalue())
        for batch, counts in split.batches:
            if batch.dtype != np.uint8 or batch.shape[1:] != split.image_shape:
                raise ValueError(f"{path.name}: a batch of {batch.dtype} {batch.shape[1:]}, not uint8 {shape[1:]}")
            data = np.ascontiguousarray(batch).data
            handle.write(data)
            digest.update(data)
            written += len(batch)
            if histogram is not None:
                histogram += channel_histogram(batch) if counts is None else counts
    if written != shape[0]:
        raise ValueError(f"{path.name}: {written} images written, {shape[0]} labels")
    return digest.hexdigest()


def write_store(
    directory: Path, splits: dict[str, SplitStream], classes: list[str], source: str, seed: int, val_fraction: float
) -> Manifest:
    """Writes the store split by split, batch by batch, so memory does not grow with the data; the train split's
    mean and std and every file's checksum are taken on the way. A failure leaves the previous store untouched."""
    with replaced_atomically(directory) as staging:
        checksums = {}
        histogram = np.zeros((splits["train"].image_shape[-1], 256), dtype=np.int64)
        for name, split in splits.items():
            path = staging / f"{name}_images.npy"
            checksums[path.name] = _write_images(path, split, histogram if name == "train" else None)
            path = staging / f"{name}_labels.npy"
            np.save(path, np.asarray(split.labels, dtype=np.int64))
            checksums[path.name] = sha256(path)
        mean, std = _mean_std(histogram)
        height, width, channels = splits["train"].image_shape
        manifest = Manifest(
            source=source,
            classes=list(classes),
            shape=(channels, height, width),
            counts={name: len(split.labels) for name, split in splits.items()},
            class_counts={
                name: np.bincount(split.labels, minlength=len(classes)).tolist() for name, split in splits.items()
            },
            checksums=checksums,
            mean=mean,
            std=std,
            seed=seed,
            val_fraction=val_fraction,
        )
        (staging / MANIFEST).write_text(json.dumps(asdict(manifest), indent=2))
    return manifest


def save_store(
    directory: Path, splits: dict[str, Split], classes: list[str], source: str, seed: int, val_fraction: float
) -> Manifest:
    """`write_store` for splits already in memory (torchvision's data sets, tests)."""
    streams = {
        name: SplitStream(split.labels, split.images.shape[1:], array_batches(split.images))
        for name, split in splits.items()
    }
    return write_store(directory, streams, classes, source, seed, val_fraction)


def load_manifest(directory: Path) -> Manifest:
    path = Path(directory) / MANIFEST
    if not path.exists():
        raise CnnpipeError(f"{directory}: no image store; run `dvc repro pull` (or `cnnpipe pull`) first")
    try:
        fields = json.loads(path.read_text())
        fields["shape"] = tuple(fields["shape"])
        return Manifest(**fields)
    except (ValueError, TypeError, KeyError) as exc:
        raise CnnpipeError(f"{path}: not a cnnpipe manifest ({exc}); rerun `dvc repro pull`") from None


def _missing(path: Path) -> CnnpipeError:
    return CnnpipeError(f"{path}: missing from the image store; rerun `dvc repro pull`")


def _load_array(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r")
    except FileNotFoundError:
        raise _missing(path) from None
    except (ValueError, OSError) as exc:  # a truncated file or a foreign header
        raise CnnpipeError(f"{path}: not a readable array ({exc}); rerun `dvc repro pull`") from None


def load_store(directory: Path, verify: bool = False) -> tuple[Manifest, dict[str, Split]]:
    """Memory-maps the arrays: DataLoader workers share the pages instead of copying the data set.

    With `verify`, every file's SHA-256 is compared with the manifest first (about 1 GB/s, 55 ms for
    Fashion-MNIST): a stage never trains on, or evaluates with, a store that was altered after `pull`.
    """
    directory = Path(directory)
    manifest = load_manifest(directory)
    if verify:
        for name, expected in manifest.checksums.items():
            if not (directory / name).is_file():
                raise _missing(directory / name)
            if sha256(directory / name) != expected:
                raise CnnpipeError(
                    f"{directory / name}: corrupt, its SHA-256 differs from the one {MANIFEST} recorded at pull; "
                    "rerun `dvc checkout pull` or `dvc repro pull`"
                )
    splits = {
        name: Split(_load_array(directory / f"{name}_images.npy"), _load_array(directory / f"{name}_labels.npy"))
        for name in manifest.counts
    }
    return manifest, splits
