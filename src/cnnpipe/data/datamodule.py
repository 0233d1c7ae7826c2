"""The LightningDataModule: the pulled store (plus stored augmented copies) as [B, C, H, W] batches in [0, 1].

Normalisation happens inside the model, so what is logged and served takes plain images.
"""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from cnnpipe.data.augmentation import (
    COPIES_IMAGES,
    COPIES_LABELS,
    ONLINE,
    PIPELINE_FILE,
    augment_images,
    flips_horizontally,
    load_pipeline,
)
from cnnpipe.data.sampling import EpochSampler
from cnnpipe.data.store import Manifest, Split, load_manifest, load_store
from cnnpipe.errors import CnnpipeError


def to_model_input(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, C] (also a read-only memory map) -> float32 [N, C, H, W] in [0, 1], a fresh copy."""
    batch = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)
    batch /= 255  # numpy: twice as fast as torch at this size, and no intra-op threads in the data path
    return torch.from_numpy(batch)


class ImageDataset(Dataset):
    """Images from one or more uint8 [N, H, W, C] parts, fetched a batch at a time.

    Keys are (epoch, index) pairs from EpochSampler; a batch is augmented under one seed key,
    (seed, ONLINE, epoch, first index), which makes it reproducible whichever worker fetches it.
    """

    def __init__(self, parts: list[Split], pipeline: A.Compose | None = None, seed: int = 0):
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(part) for part in parts])
        self.pipeline, self.seed = pipeline, seed

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _gather(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        which = np.searchsorted(self.offsets, indices, side="right") - 1
        images = np.empty((len(indices), *self.parts[0].images.shape[1:]), dtype=np.uint8)
        labels = np.empty(len(indices), dtype=np.int64)
        for part_index in np.unique(which):
            rows = np.flatnonzero(which == part_index)
            local = indices[rows] - self.offsets[part_index]
            images[rows] = self.parts[part_index].images[local]
            labels[rows] = self.parts[part_index].labels[local]
        return images, labels

    def __getitems__(self, keys: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, first = keys[0]
        images, labels = self._gather(np.array([index for _, index in keys]))
        if self.pipeline is not None:
            images = augment_images(self.pipeline, images, (self.seed, ONLINE, epoch, first))
        return to_model_input(images), torch.from_numpy(labels)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.__getitems__([key])
        return images[0], labels[0]


def _whole_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageDataset.__getitems__ already returns a collated batch."""
    return batch


class ImageDataModule(pl.LightningDataModule):
    """Train set: pulled originals + stored copies, augmented online per batch; val as stored."""

    def __init__(
        self,
        pulled: Path,
        augmented: Path | None,
        batch_size: int,
        num_workers: int,
        seed: int,
        online: bool,
    ):
        super().__init__()
        self.pulled, self.augmented = Path(pulled), augmented and Path(augmented)
        self.batch_size = batch_size  # per device, for training and validation alike
        self.num_workers, self.seed, self.online = num_workers, seed, online
        # read eagerly: the model needs the classes, shape, mean and std before setup
        self._manifest = load_manifest(self.pulled)
        self.datasets: dict[str, ImageDataset] = {}

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    @property
    def trains_mirrored(self) -> bool:
        """Whether training sees images mirrored left-right (online or in the stored copies): the model then
        learns that a mirrored picture is the same class, and evaluate may average both views (test-time flip)."""
        pipeline = self.augmented and self.augmented / PIPELINE_FILE
        if not pipeline or not pipeline.exists():
            return False
        used = self.online or (self.augmented / COPIES_IMAGES).exists()
        return used and flips_horizontally(load_pipeline(pipeline))

    def _stored_copies(self, train: Split) -> list[Split]:
        images = self.augmented and self.augmented / COPIES_IMAGES
        if not images or not images.exists():
            return []
        copies = Split(np.load(images, mmap_mode="r"), np.load(self.augmented / COPIES_LABELS, mmap_mode="r"))
        if copies.images.shape[1:] != train.images.shape[1:] or len(copies.images) != len(copies):
            raise CnnpipeError(
                f"{images}: stored copies of shape {list(copies.images.shape)} do not fit the pulled "
                f"training images {list(train.images.shape)}; rerun `dvc repro augment`"
            )
        return [copies]

    def _pipeline(self) -> A.Compose | None:
        if not (self.online and self.augmented):
            return None
        pipeline = load_pipeline(self.augmented / PIPELINE_FILE)
        return pipeline if pipeline.transforms else None

    def setup(self, stage: str | None = None) -> None:
        _, splits = load_store(self.pulled)  # memory-mapped: workers share the pages
        self.datasets = {"val": ImageDataset([splits["val"]])}  # the test split is evaluate's
        if stage in (None, "fit"):  # the copies and the pipeline only matter for training
            train = splits["train"]
            self.datasets["train"] = ImageDataset([train, *self._stored_copies(train)], self._pipeline(), self.seed)

    def _loader(self, split: str, batch_size: int, training: bool) -> DataLoader:
        rank, world_size = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        dataset = self.datasets[split]
        sampler = EpochSampler(
            len(dataset), self.seed, shuffle=training, rank=rank, world_size=world_size, drop_uneven=training
        )
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=_whole_batch,
            persistent_workers=self.num_workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, training=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.batch_size, training=False)
