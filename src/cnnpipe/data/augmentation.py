"""The albumentations pipeline of params.yaml: built by name, saved in albumentations' own format, seeded.

Randomness is a pure function of a seed key: training draws with (seed, 0, epoch, first index of the batch),
stored copies with (seed, 1, copy, first index of the chunk). So runs are reproducible from the seed, every
epoch and batch draws anew, and neither the number of DataLoader workers nor of cores changes a pixel.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import json
import math
import multiprocessing
import os
import random
import re
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import psutil
from rich.progress import Progress

from cnnpipe import plots
from cnnpipe.config import AugmentConfig
from cnnpipe.data.shift import RandomShift
from cnnpipe.data.store import Manifest
from cnnpipe.errors import CnnpipeError

ONLINE, COPIES, PREVIEW = 0, 1, 2  # the seed streams
PIPELINE_FILE, COPIES_IMAGES, COPIES_LABELS = "pipeline.json", "copies_images.npy", "copies_labels.npy"
PREVIEW_FILE = "preview.png"  # originals beside augmented versions, logged with every run
SUMMARY_FILE = "augment.json"  # what the stage did: transforms, copies, online; part of training's resume key
CHUNK = 2048  # images per seeded chunk of the stored copies: fixed, so any core count gives the same result
OWN = {"RandomShift": RandomShift}  # cnnpipe's transforms, named in augment.transforms beside albumentations'


def _transform_names() -> list[str]:
    found = [name for name, value in vars(A).items() if inspect.isclass(value) and issubclass(value, A.BasicTransform)]
    return [*OWN, *found]


def _tuples(value: Any) -> Any:
    """YAML has lists where albumentations expects tuples (ranges such as [-0.1, 0.1])."""
    if isinstance(value, list):
        return tuple(_tuples(item) for item in value)
    if isinstance(value, dict):
        return {key: _tuples(item) for key, item in value.items()}
    return value


def _valid_arguments(transform_class: type[A.BasicTransform]) -> list[str]:
    """The arguments albumentations' strict mode accepts: those of the transform's pydantic InitSchema."""
    fields = getattr(transform_class, "InitSchema", None)
    names = {"p", *(fields.model_fields if fields else ())} - {"strict"}
    return sorted(names)


def _build_transform(index: int, name: str, args: dict[str, Any]) -> A.BasicTransform:
    transform_class = OWN.get(name) or getattr(A, name, None)
    if not (inspect.isclass(transform_class) and issubclass(transform_class, A.BasicTransform)):
        close = difflib.get_close_matches(name, _transform_names(), n=1)
        hint = f"; did you mean {close[0]}?" if close else "; see albumentations' list of transforms"
        raise CnnpipeError(f"augment.transforms[{index}]: unknown albumentations transform {name!r}{hint}")
    where = f"augment.transforms[{index}] ({name})"
    try:
        # strict: an unknown argument is an error, not just a warning (albumentations' default)
        return transform_class(**_tuples(args), strict=True)
    except Exception as exc:  # albumentations raises pydantic, Value, Type and its own errors
        message = re.sub(r"\s*For further information visit \S+", "", " ".join(str(exc).split()))
        if message.startswith("Argument(s) "):  # strict mode names the base class, not the transform
            unknown = message.split("'")[1]
            valid = ", ".join(_valid_arguments(transform_class))
            raise CnnpipeError(f"{where}: unknown argument(s) '{unknown}'; valid: {valid}") from None
        raise CnnpipeError(f"{where}: {message[:300]}") from None


def build_pipeline(cfg: AugmentConfig) -> A.Compose:
    transforms = [_build_transform(index, *next(iter(item.items()))) for index, item in enumerate(cfg.transforms)]
    return A.Compose(transforms)


KEEPS_ANY_SIZE = "RandomShift: {max_fraction: 0.1}"  # params.yaml's shifts


def check_output(pipeline: A.Compose, image: np.ndarray) -> None:
    """Applies every transform once to `image`, in order and for sure (p = 1), and refuses by name one whose
    output is not a uint8 image, and a pipeline that does not give back the image's size. The store holds uint8
    pixels and the model normalises its input itself (from the pulled data's mean and std), so a float output
    (Normalize, ToFloat) would be wrapped into 0..255; every image of a batch must have the data's shape."""
    original, resized = image, None  # the last transform that changed the size: its index and itself
    for index, transform in enumerate(pipeline.transforms):
        where = f"augment.transforms[{index}] ({type(transform).__name__})"
        certain = copy.deepcopy(transform)
        certain.p = 1.0
        before = image
        try:
            image = certain(image=image)["image"]
        except Exception as exc:  # albumentations and OpenCV raise many kinds
            message = " ".join(str(exc).split())[:200]
            raise CnnpipeError(f"{where}: fails on a {list(image.shape)} uint8 image (H, W, C): {message}") from None
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8):
            kind = image.dtype if isinstance(image, np.ndarray) else type(image).__name__
            raise CnnpipeError(
                f"{where}: outputs {kind} images, not uint8 (0..255); leave out Normalize, ToFloat and ToTensorV2: "
                "cnnpipe normalises inside the model"
            )
        if image.shape[:2] != before.shape[:2]:
            resized = index, transform
    if resized is not None and image.shape[:2] != original.shape[:2]:
        raise CnnpipeError(_size_kept_by(pipeline, *resized, original.shape, image.shape))


def _size_kept_by(
    pipeline: A.Compose, index: int, transform: A.BasicTransform, shape: tuple[int, ...], out: tuple[int, ...]
) -> str:
    """The error for a pipeline that changes the data's size, with the values of its own transforms that would
    keep it: the last resizing one's height and width, and the padding before it by the margin it had."""
    height, width = shape[:2]
    fix = f"make it end at {height} x {width}"
    if isinstance(getattr(transform, "size", None), tuple):  # RandomResizedCrop, RandomSizedCrop
        fix = f"set its size: [{height}, {width}]"
    elif isinstance(getattr(transform, "height", None), int) and isinstance(getattr(transform, "width", None), int):
        fix = f"set its height: {height}, width: {width}"
        pads = [pad for pad in pipeline.transforms[:index] if isinstance(pad, A.PadIfNeeded) and pad.min_height]
        if pads and pads[-1].min_height > transform.height and (pads[-1].min_width or 0) > transform.width:
            margin = pads[-1].min_height - transform.height, pads[-1].min_width - transform.width
            fix += (
                f", after augment.transforms[{pipeline.transforms.index(pads[-1])}] (PadIfNeeded) with min_height: "
                f"{height + margin[0]}, min_width: {width + margin[1]}"
            )
    return (
        f"augment.transforms[{index}] ({type(transform).__name__}): the pipeline turns the data's {list(shape)} "
        f"images (H, W, C) into {list(out)}, and training needs the data's size: {fix}; or shift with "
        f"params.yaml's default, {KEEPS_ANY_SIZE}, which keeps any size"
    )


def save_pipeline(pipeline: A.Compose, path: Path) -> None:
    A.save(pipeline, str(path), data_format="json")


def _from_dict(serialized: dict[str, Any]) -> A.Compose:
    with warnings.catch_warnings():
        # albumentations 2.0.8 serializes some attributes its own loader then calls invalid (PadIfNeeded's
        # `padding`); it ignores them, and the file is a stage output, not user input.
        warnings.filterwarnings("ignore", message=r"Argument\(s\) .* are not valid", category=UserWarning)
        return A.from_dict(serialized)


def load_pipeline(path: Path) -> A.Compose:
    try:
        return _from_dict(json.loads(Path(path).read_text()))
    except FileNotFoundError:
        raise CnnpipeError(f"{path}: no augmentation pipeline; run `dvc repro augment` first") from None
    except Exception as exc:  # a hand-edited or truncated file: JSON, Key or albumentations errors
        message = " ".join(str(exc).split())[:200]
        raise CnnpipeError(f"{path}: not an albumentations pipeline ({message}); rerun the augment stage") from None


def flips_horizontally(pipeline: A.BaseCompose) -> bool:
    """Whether the pipeline may mirror an image left-right, at any depth (inside OneOf, SomeOf, ...)."""
    return any(
        flips_horizontally(transform)
        if isinstance(transform, A.BaseCompose)
        else isinstance(transform, A.HorizontalFlip) and transform.p > 0
        for transform in pipeline.transforms
    )


def _seed_own_state(compose: A.BaseCompose, seed: int) -> None:
    """BaseCompose.set_random_seed for the compose itself, without handing `seed` to its children."""
    compose.seed = seed
    compose.random_generator = np.random.default_rng(seed)
    compose.py_random = random.Random(seed)


def reseed(pipeline: A.BaseCompose, seed_key: Sequence[int]) -> None:
    """Gives the compose and every transform in it an independent seed derived from `seed_key`.

    albumentations' Compose.set_random_seed hands every child the same seed, so their random draws are
    perfectly correlated (HorizontalFlip(p=.5) + VerticalFlip(p=.5) flip both or neither, every time).
    Nested composes (OneOf, SomeOf, Sequential) are seeded the same way from their own derived seed.
    """
    own, *children = np.random.SeedSequence(list(seed_key)).generate_state(1 + len(pipeline.transforms))
    _seed_own_state(pipeline, int(own))
    for transform, seed in zip(pipeline.transforms, children, strict=True):
        if isinstance(transform, A.BaseCompose):
            reseed(transform, (int(seed),))
        else:
            transform.set_random_seed(int(seed))


def augment_images(pipeline: A.Compose, images: np.ndarray, seed_key: Sequence[int]) -> np.ndarray:
    """Augments uint8 [N, H, W, C] images under one seeding for the whole batch; each keeps its shape."""
    reseed(pipeline, seed_key)
    out = np.empty_like(images)
    for index, image in enumerate(images):
        augmented = pipeline(image=image)["image"]
        if augmented.ndim == 2:  # some OpenCV operations drop the channel axis of a greyscale image
            augmented = augmented[..., np.newaxis]
        if augmented.dtype != np.uint8:  # a backstop for check_output: a nested transform it did not draw
            raise CnnpipeError(f"augment.transforms: the pipeline outputs {augmented.dtype} images, not uint8 (0..255)")
        if augmented.shape != image.shape:
            raise CnnpipeError(
                f"augment.transforms: the pipeline turns a {list(image.shape)} image (H, W, C) into "
                f"{list(augmented.shape)}; it must keep the size and channels (e.g. crop back after padding)"
            )
        out[index] = augmented
    return out


def check_copies_fit(copies: int, manifest: Manifest, folder: Path) -> None:
    """make_copies holds every copy in memory, [copies x N, H, W, C] uint8, and augment writes them beside `folder`:
    more copies than either can hold are refused before the first is drawn, naming how many fit."""
    per_copy = manifest.counts["train"] * math.prod(manifest.shape)
    memory, disk = psutil.virtual_memory().available, shutil.disk_usage(folder.parent).free
    if copies * per_copy > min(memory, disk):
        raise CnnpipeError(
            f"augment.copies: {copies:,} copies of the {manifest.counts['train']:,} training images "
            f"{list(manifest.shape)} need {copies * per_copy / 1e9:,.1f} GB, in memory and on disk; available: "
            f"{memory / 1e9:,.1f} GB of memory, {disk / 1e9:,.1f} GB free beside {folder}: at most "
            f"{min(memory, disk) // per_copy:,} copies fit"
        )


# Worker state of make_copies: set once per process by the pool's initializer, so the images are not
# pickled again for every chunk (with the fork start method they are not pickled at all).
_worker: dict[str, Any] = {}


def _start_worker(serialized: dict[str, Any], images: np.ndarray) -> None:
    _worker.update(pipeline=_from_dict(serialized), images=images)


def _copy_chunk(task: tuple[int, int, int]) -> np.ndarray:
    seed, copy, start = task
    chunk = np.asarray(_worker["images"][start : start + CHUNK])
    return augment_images(_worker["pipeline"], chunk, (seed, COPIES, copy, start))


def make_copies(
    pipeline_dict_or_path: dict[str, Any] | Path,
    images: np.ndarray,
    copies: int,
    seed: int,
    workers: int | None = None,
) -> np.ndarray:
    """`copies` augmented versions of every image, [copies * N, H, W, C], on `workers` processes (all cores).

    The pipeline comes in albumentations' serialized form (`A.to_dict`, or the path of pipeline.json), which
    every worker rebuilds: the copies are drawn by the very pipeline that training loads.
    """
    if isinstance(pipeline_dict_or_path, dict):
        serialized = pipeline_dict_or_path
    else:
        serialized = A.to_dict(load_pipeline(pipeline_dict_or_path))
    tasks = [(seed, copy, start) for copy in range(copies) for start in range(0, len(images), CHUNK)]
    out = np.empty((copies * len(images), *images.shape[1:]), dtype=np.uint8)
    if not tasks:
        return out
    processes = min(workers or os.cpu_count() or 1, len(tasks))
    with (
        multiprocessing.Pool(processes, _start_worker, (serialized, images)) as pool,
        Progress() as progress,
    ):
        bar = progress.add_task(f"Augmenting {copies} cop{'y' if copies == 1 else 'ies'}", total=len(tasks))
        for (_, copy, start), chunk in zip(tasks, pool.imap(_copy_chunk, tasks), strict=True):
            first = copy * len(images) + start
            out[first : first + len(chunk)] = chunk
            progress.advance(bar)
    return out


def preview_grid(
    images: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    pipeline: A.Compose,
    seed: int,
    count: int,
    path: Path,
    versions: int = 4,
) -> Path:
    """A PNG, one row per picked image: the original (titled with its class), then `versions` draws."""
    picks = np.sort(np.random.default_rng(seed).choice(len(images), size=min(count, len(images)), replace=False))
    originals = np.asarray(images[picks])
    draws = [augment_images(pipeline, originals, (seed, PREVIEW, version, 0)) for version in range(versions)]
    tiles = np.stack([originals, *draws], axis=1).reshape(-1, *originals.shape[1:])
    titles = [
        classes[labels[index]] if column == 0 else f"augmented {column}"
        for index in picks
        for column in range(versions + 1)
    ]
    return plots.image_grid(tiles, titles, path, columns=versions + 1, title="Originals and augmented versions")
