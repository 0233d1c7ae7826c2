"""The albumentations pipeline of params.yaml: built by name, saved in albumentations' own format, seeded.

Randomness is a pure function of a seed key: training draws with (seed, 0, epoch, first index of the batch),
stored copies with (seed, 1, copy, first index of the chunk). So runs are reproducible from the seed, every
epoch and batch draws anew, and neither the number of DataLoader workers nor of cores changes a pixel.
"""

from __future__ import annotations

import difflib
import inspect
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
from rich.progress import Progress

from cnnpipe import plots
from cnnpipe.config import AugmentConfig
from cnnpipe.errors import CnnpipeError

ONLINE, COPIES, PREVIEW = 0, 1, 2  # the seed streams
CHUNK = 2048  # images per seeded chunk of the stored copies: fixed, so the result is the same on any core count


def _transform_names() -> list[str]:
    return [
        name
        for name, value in vars(A).items()
        if inspect.isclass(value) and issubclass(value, A.BasicTransform) and not inspect.isabstract(value)
    ]


def _tuples(value: Any) -> Any:
    """YAML has lists where albumentations expects tuples (ranges such as [-0.1, 0.1])."""
    if isinstance(value, list):
        return tuple(_tuples(item) for item in value)
    if isinstance(value, dict):
        return {key: _tuples(item) for key, item in value.items()}
    return value


def _build_transform(index: int, name: str, args: dict[str, Any]) -> A.BasicTransform:
    where = f"augment.transforms[{index}] ({name})"
    transform_class = getattr(A, name, None)
    if not (inspect.isclass(transform_class) and issubclass(transform_class, A.BasicTransform)):
        close = difflib.get_close_matches(name, _transform_names(), n=1)
        hint = f"; did you mean {close[0]}?" if close else "; see albumentations' list of transforms"
        raise CnnpipeError(f"augment.transforms[{index}]: unknown albumentations transform {name!r}{hint}")
    accepted = inspect.signature(transform_class.__init__).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
    if not takes_any and (unknown := sorted(set(args) - set(accepted))):
        valid = ", ".join(p for p in accepted if p not in ("self", "args", "kwargs"))
        raise CnnpipeError(f"{where}: unknown argument {unknown[0]!r}; valid: {valid}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # albumentations warns (rather than fails) on some bad arguments
            return transform_class(**_tuples(args))
    except Exception as exc:  # albumentations raises pydantic, Value, Type and its own errors
        message = " ".join(str(exc).split())
        raise CnnpipeError(f"{where}: {message[:300]}") from None


def build_pipeline(cfg: AugmentConfig) -> A.Compose:
    transforms = [_build_transform(index, *next(iter(item.items()))) for index, item in enumerate(cfg.transforms)]
    return A.Compose(transforms)


def save_pipeline(pipeline: A.Compose, path: Path) -> None:
    A.save(pipeline, str(path), data_format="json")


def load_pipeline(path: Path) -> A.Compose:
    if not Path(path).exists():
        raise CnnpipeError(f"{path}: no augmentation pipeline; run `dvc repro augment` first")
    return A.load(str(path), data_format="json")


def reseed(pipeline: A.BaseCompose, key: Sequence[int]) -> None:
    """Gives every transform its own seed derived from `key`.

    albumentations' Compose.set_random_seed hands every child the same seed, so their random draws are
    perfectly correlated (HorizontalFlip(p=.5) + VerticalFlip(p=.5) flip both or neither, every time).
    """
    transforms = list(pipeline.transforms)
    seeds = np.random.SeedSequence(list(key)).generate_state(len(transforms) + 1)
    pipeline.random_generator = np.random.default_rng(int(seeds[0]))
    pipeline.py_random.seed(int(seeds[0]))
    for transform, seed in zip(transforms, seeds[1:], strict=True):
        if isinstance(transform, A.BaseCompose):
            reseed(transform, (*key, int(seed)))
        else:
            transform.set_random_seed(int(seed))


def augment_images(pipeline: A.Compose, images: np.ndarray, key: Sequence[int]) -> np.ndarray:
    """Augments uint8 [N, H, W, C] images with one seeding for the whole batch; the shape is kept."""
    reseed(pipeline, key)
    out = np.empty_like(images)
    for index, image in enumerate(images):
        augmented = pipeline(image=image)["image"]
        out[index] = augmented.reshape(image.shape) if augmented.ndim == 2 else augmented
    return out


def _copy_chunk(task: tuple[dict, np.ndarray, tuple[int, ...]]) -> np.ndarray:
    serialized, images, key = task
    return augment_images(A.from_dict(serialized), images, key)


def make_copies(
    pipeline: A.Compose, images: np.ndarray, copies: int, seed: int, workers: int | None = None
) -> np.ndarray:
    """`copies` augmented versions of every image, [copies * N, H, W, C], computed on all cores."""
    serialized = A.to_dict(pipeline)
    tasks = [
        (serialized, np.asarray(images[start : start + CHUNK]), (seed, COPIES, copy, start))
        for copy in range(copies)
        for start in range(0, len(images), CHUNK)
    ]
    workers = workers or os.cpu_count() or 1
    with Progress() as progress, ProcessPoolExecutor(workers) as pool:
        bar = progress.add_task(f"Augmenting {copies} cop{'y' if copies == 1 else 'ies'}", total=len(tasks))
        chunks = []
        for chunk in pool.map(_copy_chunk, tasks):
            chunks.append(chunk)
            progress.advance(bar)
    return np.concatenate(chunks) if chunks else images[:0].copy()


def preview(
    pipeline: A.Compose,
    images: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    count: int,
    seed: int,
    path: Path,
    versions: int = 4,
) -> Path:
    """A grid with one row per image: the original, then `versions` augmented draws of it."""
    picks = np.random.default_rng(seed).choice(len(images), size=min(count, len(images)), replace=False)
    originals = np.asarray(images[np.sort(picks)])
    draws = [augment_images(pipeline, originals, (seed, PREVIEW, version)) for version in range(versions)]
    tiles = np.stack([originals, *draws], axis=1).reshape(-1, *originals.shape[1:])
    titles = [
        classes[labels[i]] if column == 0 else f"augmented {column}"
        for i in np.sort(picks)
        for column in range(versions + 1)
    ]
    return plots.image_grid(tiles, titles, path, columns=versions + 1, title="Originals and augmented versions")
