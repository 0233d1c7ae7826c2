"""The DataModule under a real Lightning Trainer: new draws every epoch, reproducible, worker-independent."""

import albumentations as A
import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from cnnpipe.config import AugmentConfig
from cnnpipe.data import augmentation
from cnnpipe.data.datamodule import ImageDataModule
from cnnpipe.data.store import Split, save_store
from cnnpipe.errors import CnnpipeError
from tests.helpers import quiet_trainer


class Recorder(pl.LightningModule):
    """Remembers every training batch it sees."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.batches: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def training_step(self, batch, batch_idx):
        images, labels = batch
        self.batches.append((self.current_epoch, images.clone(), labels.clone()))
        return (self.weight * images.mean()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def make_data(tmp_path, transforms, copies=0):
    """A real store of 300 random images and the augment stage's pipeline.json (and stored copies)."""
    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 256, (300, 10, 10, 1), dtype=np.uint8), rng.integers(0, 3, 300))
    save_store(tmp_path / "pulled", {"train": split, "val": split, "test": split}, ["a", "b", "c"], "x", 0, 0.1)
    (tmp_path / "augmented").mkdir(exist_ok=True)
    pipeline = augmentation.build_pipeline(AugmentConfig(transforms=transforms))
    augmentation.save_pipeline(pipeline, tmp_path / "augmented" / augmentation.PIPELINE_FILE)
    if copies:
        stored = augmentation.make_copies(A.to_dict(pipeline), split.images, copies, seed=0, workers=1)
        np.save(tmp_path / "augmented" / augmentation.COPIES_IMAGES, stored)
        np.save(tmp_path / "augmented" / augmentation.COPIES_LABELS, np.tile(split.labels, copies))
    return split


def datamodule(tmp_path, workers=0, seed=1, online=True) -> ImageDataModule:
    return ImageDataModule(
        tmp_path / "pulled",
        tmp_path / "augmented",
        batch_size=16,
        num_workers=workers,
        seed=seed,
        online=online,
    )


def record(tmp_path, workers=0, seed=1, online=True):
    module = Recorder()
    trainer = quiet_trainer(max_epochs=2, limit_train_batches=3, limit_val_batches=0, use_distributed_sampler=False)
    trainer.fit(module, datamodule=datamodule(tmp_path, workers, seed, online))
    return module.batches


def by_original(batches, split, epoch):
    """{index of the stored image: its augmented version} in one epoch's batches (by the nearest image)."""
    stored = torch.from_numpy(split.images).permute(0, 3, 1, 2).flatten(1).float() / 255
    found = {}
    for batch_epoch, images, labels in batches:
        if batch_epoch == epoch:
            indices = torch.cdist(images.flatten(1), stored).argmin(dim=1).tolist()
            assert [int(split.labels[i]) for i in indices] == labels.tolist()
            found.update(zip(indices, images, strict=True))
    return found


def test_batches_are_float_chw_in_unit_range_and_new_every_epoch(tmp_path):
    split = make_data(tmp_path, [{"GaussNoise": {"std_range": [0.1, 0.2], "p": 1}}])
    batches = record(tmp_path)
    epoch, images, labels = batches[0]
    assert images.shape == (16, 1, 10, 10) and images.dtype == torch.float32 and labels.dtype == torch.int64
    assert images.min() >= 0 and images.max() <= 1 and images.is_contiguous()
    assert [epoch for epoch, _, _ in batches] == [0, 0, 0, 1, 1, 1]
    first, second = by_original(batches, split, 0), by_original(batches, split, 1)
    seen_twice = first.keys() & second.keys()
    assert seen_twice and all(not torch.equal(first[index], second[index]) for index in seen_twice)


def test_the_same_seed_gives_the_same_batches_whatever_the_workers(tmp_path):
    make_data(tmp_path, [{"HorizontalFlip": {"p": 0.5}}, {"GaussNoise": {"p": 1}}])
    reference = record(tmp_path, workers=0)
    for other in (record(tmp_path, workers=0), record(tmp_path, workers=2)):
        assert all(torch.equal(a[1], b[1]) and torch.equal(a[2], b[2]) for a, b in zip(reference, other, strict=True))
    different = record(tmp_path, seed=2)
    assert not torch.equal(reference[0][1], different[0][1])


def test_without_online_augmentation_images_are_the_stored_pixels(tmp_path):
    split = make_data(tmp_path, [{"GaussNoise": {"p": 1}}])
    for _, images, labels in record(tmp_path, online=False):
        for image, label in zip(images, labels, strict=True):
            stored = torch.from_numpy(split.images).permute(0, 3, 1, 2).float() / 255
            matches = (stored == image).flatten(1).all(dim=1).nonzero().flatten()
            assert len(matches) >= 1 and int(split.labels[matches[0]]) == int(label)


def test_the_manifest_is_there_before_setup_and_stored_copies_join_the_training_set(tmp_path):
    split = make_data(tmp_path, [{"HorizontalFlip": {"p": 1}}], copies=2)
    data = datamodule(tmp_path, online=False)
    assert data.manifest.classes == ["a", "b", "c"] and data.manifest.shape == (1, 10, 10)
    data.setup("fit")
    train = data.datasets["train"]
    assert len(train) == 3 * len(split)
    flipped, label = train[(0, len(split) + 5)]  # the first copy of image 5, flipped by the pipeline
    assert torch.equal(flipped[0], torch.from_numpy(split.images[5, :, ::-1, 0].copy()).float() / 255)
    assert int(label) == int(split.labels[5])


def test_stored_copies_that_do_not_fit_the_store_are_a_one_line_error(tmp_path):
    make_data(tmp_path, [])
    np.save(tmp_path / "augmented" / augmentation.COPIES_IMAGES, np.zeros((4, 8, 8, 1), np.uint8))
    np.save(tmp_path / "augmented" / augmentation.COPIES_LABELS, np.zeros(4, np.int64))
    with pytest.raises(CnnpipeError, match=r"copies_images.npy: stored copies of shape \[4, 8, 8, 1\] do not fit"):
        datamodule(tmp_path).setup("fit")


def test_evaluation_loaders_serve_every_image_once_in_order(tmp_path):
    split = make_data(tmp_path, [{"GaussNoise": {"p": 1}}])
    data = datamodule(tmp_path)
    data.setup("validate")
    images = torch.cat([batch for batch, _ in data.val_dataloader()])
    assert torch.equal(images, torch.from_numpy(split.images).permute(0, 3, 1, 2).float() / 255)
    assert "train" not in data.datasets  # evaluation never loads the pipeline or the copies


def test_a_batch_draws_by_its_epoch_and_first_index_only(tmp_path):
    make_data(tmp_path, [{"GaussNoise": {"p": 1}}])
    data = datamodule(tmp_path)
    data.setup("fit")
    train = data.datasets["train"]
    keys = [(0, index) for index in range(16)]
    images, _ = train.__getitems__(keys)
    assert torch.equal(images, train.__getitems__(keys)[0])
    assert not torch.equal(images, train.__getitems__([(1, index) for _, index in keys])[0])
    assert not torch.equal(images[1:], train.__getitems__(keys[1:])[0])  # another first index, another draw


class RankRecorder(Recorder):
    """Saves its batches per rank: a spawned DDP process hands back nothing else."""

    def __init__(self, folder):
        super().__init__()
        self.folder = folder

    def on_train_end(self):
        torch.save(self.batches, self.folder / f"rank{self.global_rank}.pt")


def record_two_ranks(tmp_path, folder):
    folder.mkdir()
    trainer = quiet_trainer(
        max_epochs=2,
        limit_train_batches=3,
        limit_val_batches=0,
        devices=2,
        strategy="ddp_spawn",  # in-process launch: a test cannot re-run pytest as Lightning's `ddp` would
        use_distributed_sampler=False,
    )
    trainer.fit(RankRecorder(folder), datamodule=datamodule(tmp_path))
    return [torch.load(folder / f"rank{rank}.pt") for rank in (0, 1)]


def test_two_ddp_ranks_get_disjoint_images_and_their_own_reproducible_draws(tmp_path):
    split = make_data(tmp_path, [{"GaussNoise": {"p": 1}}])
    ranks = record_two_ranks(tmp_path, tmp_path / "first")
    for epoch in (1, 0):
        seen = [by_original(batches, split, epoch) for batches in ranks]
        assert len(seen[0]) == len(seen[1]) == 48 and not set(seen[0]) & set(seen[1])
    stored = torch.from_numpy(split.images).permute(0, 3, 1, 2).float() / 255
    noise = [image - stored[index] for index, image in (next(iter(rank.items())) for rank in seen)]
    assert not torch.allclose(noise[0], noise[1])  # each rank draws its own augmentation
    again = record_two_ranks(tmp_path, tmp_path / "again")
    for before, after in zip(ranks, again, strict=True):
        assert all(torch.equal(a[1], b[1]) for a, b in zip(before, after, strict=True))  # the seed decides all
