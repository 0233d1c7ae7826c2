"""Training-input throughput, measured side by side in one run: what online augmentation costs per epoch.

Compares, on the pulled training set (run `make repro` or `cnnpipe pull && cnnpipe augment` first):
  - the DataLoader without augmentation, with the params.yaml pipeline (one seeding per batch), and with one
    seeding per image (the alternative cnnpipe rejected), for num_workers 0 and 1;
  - the model's own training speed on the same batches, to put the input cost in proportion.
Usage: .venv/bin/python benchmarks/dataloader.py [--batches 100]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from cnnpipe.config import load_params
from cnnpipe.data import augmentation
from cnnpipe.data.datamodule import ImageDataModule, ImageDataset, to_model_input
from cnnpipe.paths import Paths
from cnnpipe.stages.train import build_module


class PerImageSeeding(ImageDataset):
    """Reseeds the pipeline for every image instead of every batch."""

    def __getitems__(self, keys):
        epoch, _ = keys[0]
        images, labels = self._gather(np.array([index for _, index in keys]))
        images = np.concatenate(
            [
                augmentation.augment_images(self.pipeline, image[None], (self.seed, 0, epoch, int(index)))
                for image, (_, index) in zip(images, keys, strict=True)
            ]
        )
        return to_model_input(images), torch.from_numpy(labels)


def images_per_second(loader, batches: int) -> float:
    iterator = iter(loader)
    next(iterator)  # worker start-up is not throughput
    start, count = time.perf_counter(), 0
    for _, (images, _) in zip(range(batches), iterator, strict=False):
        count += len(images)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=100)
    args = parser.parse_args()
    params = load_params()
    rows = []
    for workers in (0, 1):
        for label, online, variant in (
            ("no augmentation", False, None),
            ("per-batch seeding", True, None),
            ("per-image seeding", True, PerImageSeeding),
        ):
            datamodule = ImageDataModule(
                Paths().pulled,
                Paths().augmented,
                params.train.batch_size,
                workers,
                params.seed,
                online,
            )
            datamodule.setup("fit")
            if variant is not None:
                train = datamodule.datasets["train"]
                datamodule.datasets["train"] = variant(train.parts, train.pipeline, train.seed)
            rows.append(
                (f"{label}, {workers} worker(s)", images_per_second(datamodule.train_dataloader(), args.batches))
            )
    module = build_module(params, datamodule)
    optimizer = torch.optim.AdamW(module.parameters())
    images, labels = next(iter(datamodule.train_dataloader()))
    start = time.perf_counter()
    for _ in range(20):
        loss = module.loss(module(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model_speed = 20 * len(images) / (time.perf_counter() - start)
    baseline = rows[0][1]
    print(f"{'input pipeline':42s} {'images/s':>10s} {'vs no aug':>10s} {'vs model':>9s}")
    for label, speed in rows:
        print(f"{label:42s} {speed:10.0f} {speed / baseline:10.2f} {speed / model_speed:9.2f}")
    print(f"{'model forward+backward+step (reference)':42s} {model_speed:10.0f}")


if __name__ == "__main__":
    main()
