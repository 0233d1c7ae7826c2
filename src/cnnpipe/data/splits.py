"""Splits and class subsets decided on the labels alone, before a single image is decoded.

Image folders are split and subset on their file lists, then decoded straight into the store; in-memory data sets
(torchvision's) are indexed with the same masks, so both give the same split for the same seed.
"""

from __future__ import annotations

import numpy as np

from cnnpipe.errors import CnnpipeError


def stratified_mask(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """True for round(`fraction` x size) of every class (at least one image of a class with two or more), chosen
    by a generator seeded with `seed`: the part that is held out."""
    rng = np.random.default_rng(seed)
    held_out = [np.empty(0, dtype=np.int64)]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        count = max(1, round(len(members) * fraction)) if len(members) > 1 else 0
        held_out.append(members[:count])
    mask = np.zeros(len(labels), dtype=bool)
    mask[np.concatenate(held_out)] = True
    return mask


def class_mapping(classes: list[str], wanted: list[str]) -> np.ndarray:
    """Old label -> new label (the position in `wanted`), -1 for a class that is dropped."""
    if unknown := [name for name in wanted if name not in classes]:
        raise CnnpipeError(f"data.classes: unknown class {unknown[0]!r}; valid: {', '.join(classes)}")
    mapping = np.full(len(classes), -1)
    mapping[[classes.index(name) for name in wanted]] = np.arange(len(wanted))
    return mapping
