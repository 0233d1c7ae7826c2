"""The DataModule under a real Lightning Trainer: augmentation new every epoch, reproducible, worker-independent."""

import numpy as np
import pytorch_lightning as pl
import torch

from cnnpipe.config import AugmentConfig
from cnnpipe.data import augmentation
from cnnpipe.data.datamodule import ImageDataModule
from cnnpipe.data.store import Split, save_store


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


def make_data(tmp_path, transforms):
    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 256, (96, 10, 10, 1), dtype=np.uint8), rng.integers(0, 3, 96))
    save_store(tmp_path / "pulled", {"train": split, "val": split, "test": split}, ["a", "b", "c"], "x", 0, 0.1)
    (tmp_path / "augmented").mkdir(exist_ok=True)
    pipeline = augmentation.build_pipeline(AugmentConfig(transforms=transforms))
    augmentation.save_pipeline(pipeline, tmp_path / "augmented" / "pipeline.json")
    return split


def record(tmp_path, workers=0, seed=1, online=True):
    datamodule = ImageDataModule(
        tmp_path / "pulled",
        tmp_path / "augmented",
        batch_size=16,
        eval_batch_size=32,
        num_workers=workers,
        seed=seed,
        online=online,
    )
    module = Recorder()
    trainer = pl.Trainer(
        max_epochs=2,
        limit_train_batches=3,
        limit_val_batches=0,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    trainer.fit(module, datamodule=datamodule)
    return module.batches


def test_batches_are_float_chw_in_unit_range_and_new_every_epoch(tmp_path):
    make_data(tmp_path, [{"GaussNoise": {"std_range": [0.1, 0.2], "p": 1}}])
    batches = record(tmp_path)
    epoch, images, labels = batches[0]
    assert images.shape == (16, 1, 10, 10) and images.dtype == torch.float32 and labels.dtype == torch.int64
    assert images.min() >= 0 and images.max() <= 1
    assert [epoch for epoch, _, _ in batches] == [0, 0, 0, 1, 1, 1]
    assert not torch.equal(batches[0][1], batches[3][1])


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
