"""The LightningModule: heads, losses and optimisers, trained for real on tiny tensors."""

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from cnnpipe.config import TrainConfig
from cnnpipe.models.module import CnnClassifier

LAYERS = [{"type": "conv", "out": 4, "kernel": 3, "padding": 1}, {"type": "relu"}, {"type": "maxpool"}]


def classifier(classes: int, channels: int = 1, **train) -> CnnClassifier:
    return CnnClassifier(
        {"layers": LAYERS},
        TrainConfig(**train).model_dump(mode="json"),
        (channels, 8, 8),
        [f"c{i}" for i in range(classes)],
        [0.5] * channels,
        [0.25] * channels,
    )


def test_two_classes_use_one_logit_with_sigmoid():
    module = classifier(2).eval()
    logits = module(torch.rand(5, 1, 8, 8))
    assert logits.shape == (5, 1)
    probabilities = module.probabilities(logits)
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(5))
    assert torch.equal(module.predictions(logits), (torch.sigmoid(logits[:, 0]) > 0.5).long())
    labels = torch.tensor([0, 1, 1, 0, 1])
    expected = torch.nn.functional.binary_cross_entropy(torch.sigmoid(logits[:, 0]), labels.float())
    assert torch.isclose(module.loss(logits, labels), expected, atol=1e-6)


def test_many_classes_use_softmax_cross_entropy_and_label_smoothing_in_training_only():
    module = classifier(5, label_smoothing=0.2)
    logits = torch.randn(6, 5)
    labels = torch.arange(6) % 5
    module.train()
    smoothed = module.loss(logits, labels)
    module.eval()
    assert torch.isclose(module.loss(logits, labels), torch.nn.functional.cross_entropy(logits, labels))
    assert not torch.isclose(smoothed, module.loss(logits, labels))
    assert torch.allclose(module.probabilities(logits).sum(dim=1), torch.ones(6))


@pytest.mark.parametrize(
    ("optimizer", "scheduler", "classes", "channels_last"),
    [
        ("adamw", "onecycle", 3, False),
        ("sgd", "cosine", 2, False),
        ("sgd", "none", 4, False),
        ("adamw", "none", 3, True),
    ],
)
def test_training_reduces_the_loss(optimizer, scheduler, classes, channels_last):
    torch.manual_seed(0)
    channels = 3  # NHWC and NCHW strides differ only with more than one channel
    images = torch.rand(64, channels, 8, 8)
    labels = torch.arange(64) % classes
    images[torch.arange(64), 0, labels * 2] += 2.0  # the class is a bright row: learnable in a few epochs
    loader = DataLoader(TensorDataset(images, labels), batch_size=16, shuffle=True)
    module = classifier(
        classes, channels, optimizer=optimizer, scheduler=scheduler, lr=0.05, channels_last=channels_last
    )
    trainer = pl.Trainer(
        max_epochs=8,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, loader, loader)
    metrics = trainer.callback_metrics
    assert metrics["val/acc"] > 0.9
    assert metrics["train/loss"] < 0.5
    conv = module.network.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) == channels_last
