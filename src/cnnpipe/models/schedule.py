"""Whether a training has enough optimizer steps to learn from: too few are said before the first step, with what
to change. A folder of 134 pictures at the default batch of 128 gives 2 steps an epoch; 3 epochs of that train to
chance without a word, where the number that matters is the steps, not the epochs."""

from __future__ import annotations

import math

import pytorch_lightning as pl

from cnnpipe.config import TrainConfig
from cnnpipe.console import warn

MIN_STEPS = 200  # fewer, and a small network from scratch stays near chance (docs/benchmarks.md, issue 26)
MIN_BATCHES = 10  # per epoch: fewer, and a smaller batch is the better lever than more epochs


def too_short(steps: int, epochs: int, images: int, batch_size: int, devices: int) -> str | None:
    """One line saying why `steps` optimizer steps in all are too few, and the settings that give MIN_STEPS; None
    when they are enough."""
    if steps >= MIN_STEPS:
        return None
    per_epoch = max(1, math.ceil(steps / epochs))
    fix = f"train.epochs: {math.ceil(MIN_STEPS / per_epoch)}"
    if per_epoch < MIN_BATCHES and images >= 2 * MIN_BATCHES * devices:
        smaller = max(8, 2 ** int(math.log2(images / devices / MIN_BATCHES)))
        if smaller < batch_size:
            batches = math.ceil(images / devices / smaller)
            fix += f", or train.batch_size: {smaller} ({batches} steps an epoch) and train.epochs: "
            fix += f"{math.ceil(MIN_STEPS / batches)}"
    global_batch = f"{batch_size} x {devices} devices" if devices > 1 else str(batch_size)
    return (
        f"train: {steps} optimizer steps in all ({epochs} epochs of {per_epoch} batches of {global_batch} from "
        f"{images} training images) are too few to learn from; for {MIN_STEPS} or more set {fix}"
    )


class ScheduleCheck(pl.Callback):
    """Says so, once training is about to start, when a complete training (not a smoke test on part of the
    batches) has too few steps: Lightning's own count, so devices, limits and resumption are all in it."""

    def __init__(self, train: TrainConfig):
        self.train = train

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.train.complete:
            return
        images = len(trainer.train_dataloader.dataset)
        steps = int(trainer.estimated_stepping_batches)
        message = too_short(steps, trainer.max_epochs, images, self.train.batch_size, trainer.world_size)
        if message:
            warn(message)
