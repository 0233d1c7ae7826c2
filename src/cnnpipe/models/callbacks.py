"""Per-epoch history: a CSV that `dvc plots` reads and the same numbers in MLflow, epoch time and images/s included.

The rows live in the callback's state, which Lightning stores in every checkpoint, so a resumed training
continues the history instead of starting a new one. The MLflow run is opened here, in `setup`, on global
rank 0 only: however many processes DDP starts, there is one run.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from cnnpipe.tracking.mlflow_run import TrackedRun


class EpochHistory(pl.Callback):
    def __init__(self, csv_path: Path, open_run: Callable[[], TrackedRun] | None = None):
        self.csv_path = Path(csv_path)
        self.open_run = open_run
        self.run: TrackedRun | None = None
        self.rows: list[dict[str, float]] = []
        self._started = self._last_batch = 0.0
        self._images = 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.is_global_zero and self.open_run is not None and self.run is None:
            self.run = self.open_run()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """A run that fails or is interrupted is ended as such in MLflow, never left RUNNING."""
        if self.run is not None:
            self.run.end_after(exception)

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
        row["images_per_sec"] = self._images * trainer.world_size / seconds
        self.rows.append(row)
        if trainer.is_global_zero:
            self._write_csv()
            if self.run is not None:
                self.run.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])

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
