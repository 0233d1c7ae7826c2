"""The training's own callbacks: the per-epoch history and a progress bar that costs the training nothing.

EpochHistory: a CSV that `dvc plots` reads, with epoch time, images/s and the learning rate beside the module's
metrics; those three go to the Trainer's loggers too (the module's own reach them through Lightning). The rows
live in the callback's state, which Lightning stores in every checkpoint, so a resumed training continues the
history instead of starting a new one.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar


class EpochHistory(pl.Callback):
    def __init__(self, csv_path: Path, forward_flops: int = 0):
        """`forward_flops` of one image: with it, each row says the FLOP/s trained (3x forward per image)."""
        self.csv_path = Path(csv_path)
        self.forward_flops = forward_flops
        self.rows: list[dict[str, float]] = []
        self._started = self._last_batch = 0.0
        self._images = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = self._last_batch = time.perf_counter()
        self._images = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._images += len(batch[1])
        self._last_batch = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        seconds = max(self._last_batch - self._started, 1e-9)  # training only: validation is not counted
        row = {"epoch": trainer.current_epoch}
        row.update(
            {
                key: float(value)
                for key, value in sorted(trainer.callback_metrics.items())
                if key.startswith(("train/", "val/"))
            }
        )
        row["lr"] = trainer.optimizers[0].param_groups[0]["lr"]
        row["epoch_time"] = seconds
        row["finished_at"] = time.time()  # wall clock: time to accuracy, across a resume too
        row["images_per_sec"] = self._images * trainer.world_size / seconds
        if self.forward_flops:
            row["gflops_per_sec"] = row["images_per_sec"] * 3 * self.forward_flops / 1e9
        self.rows.append(row)
        timing = {
            key: value for key, value in row.items() if key in ("lr", "epoch_time", "images_per_sec", "gflops_per_sec")
        }
        for logger in trainer.loggers:  # rank 0 only, inside each logger
            logger.log_metrics(timing, step=row["epoch"])
        if trainer.is_global_zero:
            self._write_csv()

    def _write_csv(self) -> None:
        self.csv_path.parent.mkdir(parents=True, exist_ok=True)
        columns = list(dict.fromkeys(key for row in self.rows for key in row))
        with self.csv_path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict["rows"])


class ProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, drawn at most `per_second` times a second and at the end of each loop.

    Lightning draws it every `refresh_rate` batches, with the metrics: after every batch that cost 0.4 ms of a
    14 ms CPU step (AMD EPYC, 2 cores; docs/benchmarks.md), and a fixed count of batches cannot suit both a CPU
    step and a GPU step a hundred times shorter. Lightning's rich bar does its work after every batch whatever the
    rate, and draws from a thread of its own that competes with the training's on 2 cores. `_should_update` is
    Lightning's private question; tests/test_callbacks.py fails if Lightning stops asking it.
    """

    def __init__(self, per_second: float = 4.0):
        super().__init__()
        self.interval = 1 / per_second
        self._drawn = -self.interval

    def _should_update(self, current: int, total: int) -> bool:
        """Lightning asks after each batch of each loop; the last batch is always drawn."""
        now = time.monotonic()
        if not self.is_enabled or (current != total and now - self._drawn < self.interval):
            return False
        self._drawn = now
        return True
