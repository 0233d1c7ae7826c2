"""The training's own callbacks, in a real fit: a progress bar drawn by the clock, not after every batch."""

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from cnnpipe.models.callbacks import ProgressBar
from tests.helpers import quiet_trainer
from tests.test_module import bright_row_images, classifier


class DrawnCounts(pl.Callback):
    """The count the training bar showed after each batch (the bar's own hook runs first)."""

    def __init__(self, bar: ProgressBar):
        self.bar, self.shown = bar, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.shown.append(self.bar.train_progress_bar.n)


def test_the_bar_is_drawn_at_most_at_its_rate_and_after_the_last_batch():
    torch.manual_seed(0)
    bar = ProgressBar(per_second=1e-6)  # a draw per 11 days: the first batch and the last only
    counts = DrawnCounts(bar)
    trainer = quiet_trainer(max_epochs=1, enable_progress_bar=True, callbacks=[bar, counts])
    trainer.fit(classifier(3), DataLoader(bright_row_images(80, 3, 1), batch_size=4))
    assert counts.shown == [1] * 19 + [20]  # Lightning's own bar: 1, 2, 3, ... 20


def test_the_bar_is_drawn_after_every_batch_at_a_high_rate():
    bar = ProgressBar(per_second=1e9)
    counts = DrawnCounts(bar)
    trainer = quiet_trainer(max_epochs=1, enable_progress_bar=True, callbacks=[bar, counts])
    trainer.fit(classifier(3), DataLoader(bright_row_images(20, 3, 1), batch_size=4))
    assert counts.shown == [1, 2, 3, 4, 5]
