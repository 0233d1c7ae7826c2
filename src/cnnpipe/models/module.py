"""The LightningModule: the network, its task head (softmax or sigmoid), loss, metrics and optimiser."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric

from cnnpipe.config import ModelConfig, TrainConfig
from cnnpipe.errors import CnnpipeError
from cnnpipe.models.hardware import fused_optimizer, uses_channels_last
from cnnpipe.models.network import build_model_network
from cnnpipe.models.own_network import source_digest
from cnnpipe.models.spec import PlannedLayer


def class_probabilities(logits: torch.Tensor, binary: bool) -> torch.Tensor:
    """Per-class probabilities [B, N], also for the single-logit binary head (sigmoid), softmax otherwise."""
    if binary:
        positive = torch.sigmoid(logits.squeeze(1))
        return torch.stack([1 - positive, positive], dim=1)
    return torch.softmax(logits, dim=1)


class Predictor(torch.nn.Module):
    """The served model: images [B, C, H, W] in [0, 1] -> class probabilities [B, N], one column per class."""

    def __init__(self, network: torch.nn.Module, binary: bool):
        super().__init__()
        self.network = network
        self.binary = binary

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return class_probabilities(self.network(images), self.binary)


class CnnClassifier(pl.LightningModule):
    """Classifies [C, H, W] images in [0, 1].

    The network outputs logits. Two classes use one logit with a sigmoid and binary cross-entropy; more
    classes use one logit per class with softmax cross-entropy. Everything needed to rebuild it is in the
    checkpoint's hyperparameters, so `evaluate` needs only the checkpoint file.
    """

    def __init__(
        self,
        model: dict[str, Any],
        train: dict[str, Any],
        input_shape: tuple[int, int, int],
        classes: list[str],
        mean: list[float],
        std: list[float],
        trained_mirrored: bool = False,
        network_digest: str | None = None,
    ):
        """`trained_mirrored`: training augmentation flipped images left-right (see ImageDataModule).
        `network_digest`: the SHA-256 of model.class's file as trained; the weights fit no other code."""
        super().__init__()
        self.save_hyperparameters(logger=False)  # the tracking module logs params.yaml itself, flattened
        self.model_config = ModelConfig.model_validate(model)
        if network_digest != source_digest(self.model_config):
            raise CnnpipeError(
                f"model.class: {self.model_config.network_class.file} is not the code this model was trained with "
                "(edited, or missing); restore it, or retrain with `dvc repro train`"
            )
        self.train_config = TrainConfig.model_validate(train)
        self.classes = list(classes)
        self.plan: list[PlannedLayer] | None
        self.plan, self.network = build_model_network(self.model_config, tuple(input_shape), len(classes), mean, std)
        self.binary = len(classes) == 2
        self.trained_mirrored = trained_mirrored
        self.example_input_array = torch.zeros(1, *input_shape)
        self.channels_last = False  # decided in on_fit_start, once Lightning has chosen the device and precision
        # Each takes its epoch's mean once, weighted by the images it covers: exact across DDP ranks.
        self.train_acc, self.val_acc = MeanMetric(), MeanMetric()
        self.train_loss, self.val_loss = MeanMetric(), MeanMetric()
        self._sums: dict[str, torch.Tensor] = {}  # per stage, this epoch: [loss x images, correct predictions]
        self._images: dict[str, int] = {}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits: [B, 1] for two classes, [B, N] otherwise."""
        return self.network(images)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        smoothing = self.train_config.label_smoothing if self.training else 0.0
        if self.binary:
            targets = labels.float() * (1 - smoothing) + 0.5 * smoothing
            return F.binary_cross_entropy_with_logits(logits.squeeze(1), targets)
        return F.cross_entropy(logits, labels, label_smoothing=smoothing)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return class_probabilities(logits, self.binary)

    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        return (logits.squeeze(1) > 0).long() if self.binary else logits.argmax(dim=1)

    def on_fit_start(self) -> None:
        """NHWC weights when `train.channels_last` says so for the device and precision Lightning chose."""
        self.channels_last = uses_channels_last(
            self.train_config.channels_last, self.device.type, self.trainer.precision
        )
        if self.channels_last:  # the batches follow in on_after_batch_transfer
            self.to(memory_format=torch.channels_last)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if not self.channels_last:
            return batch
        if isinstance(batch, torch.Tensor):  # the model summary's example input
            return batch.contiguous(memory_format=torch.channels_last)
        images, labels = batch
        return images.contiguous(memory_format=torch.channels_last), labels

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        loss = self.loss(logits, labels)
        # Sums per batch; the metric objects take them once an epoch: updating those after every batch cost
        # 0.37 ms of a 14 ms CPU step, and a self.log per batch a third of it (docs/benchmarks.md). float32
        # counts exactly up to 16.7M images per epoch and device.
        batch_sums = torch.stack((loss.detach() * len(labels), (self.predictions(logits) == labels).sum().float()))
        self._sums[stage] = self._sums[stage] + batch_sums if stage in self._sums else batch_sums
        self._images[stage] = self._images.get(stage, 0) + len(labels)
        return loss

    def _log_epoch(self, stage: str) -> None:
        """The epoch's mean loss and accuracy into the metric objects, which Lightning computes (exactly across
        DDP ranks, each mean weighted by its images) and logs at the epoch's end."""
        if stage not in self._sums:
            return
        (loss_sum, correct), images = self._sums.pop(stage), self._images.pop(stage)
        for name, total in (("loss", loss_sum), ("acc", correct)):
            metric = getattr(self, f"{stage}_{name}")
            metric.update(total / images, weight=images)
            self.log(f"{stage}/{name}", metric, on_step=False, on_epoch=True, prog_bar=True)

    def on_train_epoch_start(self) -> None:
        """Not the sums of an epoch that a callback or a signal ended before its last training step."""
        self._sums.pop("train", None)
        self._images.pop("train", None)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def training_step(self, batch, batch_idx):
        loss = self._step(batch, "train")
        # at the epoch's last batch: Lightning calls the module's on_train_epoch_end after the callbacks' one, where
        # EpochHistory reads the metrics
        if self.trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self._log_epoch("train")
        return loss

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def configure_optimizers(self):
        cfg = self.train_config
        fused = fused_optimizer(self.device)  # Lightning has moved the module to its device by now
        if cfg.optimizer == "sgd":
            optimizer = torch.optim.SGD(  # Nesterov where there is momentum: torch refuses it with none
                self.parameters(),
                lr=cfg.lr,
                momentum=cfg.momentum,
                weight_decay=cfg.weight_decay,
                nesterov=cfg.momentum > 0,
                fused=fused,
            )
        else:
            optimizer = torch.optim.AdamW(self.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
        if cfg.scheduler == "none":
            return optimizer
        steps = int(self.trainer.estimated_stepping_batches)
        if cfg.scheduler == "onecycle":
            scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=steps)
        else:
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def load_model(checkpoint: Path) -> CnnClassifier:
    if not checkpoint.exists():
        raise CnnpipeError(f"{checkpoint}: no trained model; run `dvc repro train` first")
    try:
        module = CnnClassifier.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True)
    except CnnpipeError as exc:  # its own network's file (model.class), named
        raise CnnpipeError(f"{checkpoint}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - truncated, foreign or hand-edited: pickle, zip, key, type errors
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise CnnpipeError(f"{checkpoint}: not a readable cnnpipe model ({reason}); rerun `dvc repro train`") from None
    return module.eval()
