"""The Lightning Trainer as params.yaml's `train` section configures it, and what it resolved `auto` to.

Lightning's own errors about a setting are named by the params key that set it, in one line.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytorch_lightning as pl
from lightning_fabric.plugins.environments import SLURMEnvironment
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning.accelerators import CPUAccelerator
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

from cnnpipe.config import TrainConfig
from cnnpipe.errors import CnnpipeError
from cnnpipe.models import resume
from cnnpipe.models.callbacks import ProgressBar
from cnnpipe.models.hardware import auto_precision
from cnnpipe.models.requeue import RequeueOnSignal
from cnnpipe.models.schedule import ScheduleCheck

# The Trainer arguments Lightning may reject, by the params key that sets them (named in the error).
TRAINER_KEYS = (
    "limit_train_batches",
    "limit_val_batches",
    "sync_batchnorm",
    "num_nodes",
    "precision",
    "strategy",
    "devices",
    "accelerator",
)


# Lightning's warnings about what cnnpipe does on purpose, by their message: nothing a user could act on.
LIGHTNING_NOISE = (
    r".*AMP with fp16 is not supported on CPU",  # build_trainer refuses 16-mixed on a CPU itself
    r"The `srun` command is available on your system",  # a login node; pipelines/slurm launches with srun
    r"You have overridden `on_after_batch_transfer` in `LightningModule`",  # the module's NHWC batches
    r"Precision bf16-mixed is not supported by the model summary",  # only the summary's size estimate
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # Lightning's own call into torch's pytree
)


@contextmanager
def quiet_lightning(announcements: bool = False) -> Iterator[None]:
    """Without LIGHTNING_NOISE; and, by default, without the hardware and an advert that Lightning announces on
    every new Trainer (`describe` says it in one line). The fit keeps `announcements`: when it stopped, what it
    resumed from."""
    log = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    level = log.level
    if not announcements:
        log.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for message in LIGHTNING_NOISE:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        log.setLevel(level)


def describe(trainer: pl.Trainer) -> str:
    """What Lightning resolved `auto` and the precision to: what actually runs."""
    accelerator = type(trainer.accelerator).__name__.removesuffix("Accelerator")
    return (
        f"{accelerator} x {trainer.num_devices} device(s) x {trainer.num_nodes} node(s), "
        f"{type(trainer.strategy).__name__}, precision {trainer.precision}"
    )


def build_trainer(
    cfg: TrainConfig,
    checkpoints: Path,
    root: Path,
    callbacks: list[pl.Callback],
    logger: pl.loggers.Logger | bool = False,
) -> pl.Trainer:
    mode = "max" if cfg.monitor.endswith("acc") else "min"
    callbacks = [
        ModelCheckpoint(
            dirpath=checkpoints,
            filename=Path(resume.BEST).stem,
            monitor=cfg.monitor,
            mode=mode,
            save_last=True,
            auto_insert_metric_name=False,
            enable_version_counter=False,  # a resumed run overwrites best.ckpt instead of adding best-v1.ckpt
        ),
        ProgressBar(),
        ScheduleCheck(cfg),
        *callbacks,
    ]
    # Under SLURM our callback, not Lightning's signal handler, saves and requeues on --signal (see requeue.py).
    with quiet_lightning():  # detect() hints at srun wherever Slurm is installed
        slurm = [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []
    callbacks += [RequeueOnSignal(root)] if slurm else []
    if cfg.early_stopping.patience is not None:
        callbacks.append(
            EarlyStopping(cfg.monitor, cfg.early_stopping.min_delta, cfg.early_stopping.patience, mode=mode)
        )
    try:
        with quiet_lightning():
            trainer = pl.Trainer(
                max_epochs=cfg.epochs,
                accelerator=cfg.accelerator,
                devices=cfg.devices,
                num_nodes=cfg.num_nodes,
                strategy=cfg.strategy,
                precision=auto_precision(cfg.accelerator) if cfg.precision == "auto" else cfg.precision,
                sync_batchnorm=cfg.sync_batchnorm,
                deterministic=cfg.deterministic,
                limit_train_batches=cfg.limit_train_batches,
                limit_val_batches=cfg.limit_val_batches,
                callbacks=callbacks,
                logger=logger,
                default_root_dir=root,  # where a SLURM preemption checkpoint goes (requeue.py)
                plugins=slurm,
                use_distributed_sampler=False,  # the datamodule's EpochSampler shards exactly, without padding
            )
    except (MisconfigurationException, ValueError, RuntimeError) as exc:
        message = " ".join(str(exc).split())
        key = next((key for key in TRAINER_KEYS if key in message), "accelerator")
        raise CnnpipeError(f"train.{key}: Lightning refuses these settings: {message[:300]}") from None
    if cfg.precision == "16-mixed" and isinstance(trainer.accelerator, CPUAccelerator):
        # Lightning would quietly run bf16-mixed instead, while the run's params said 16-mixed
        raise CnnpipeError("train.precision: 16-mixed (float16 AMP) needs a GPU; on a CPU use bf16-mixed or 32-true")
    return trainer
