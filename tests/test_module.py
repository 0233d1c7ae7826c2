"""The LightningModule: heads, losses and optimisers, trained for real on tiny tensors."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from cnnpipe.config import TrainConfig
from cnnpipe.models.module import CnnClassifier
from tests.helpers import quiet_trainer

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


def bright_row_images(count: int, classes: int, channels: int) -> TensorDataset:
    """Random images whose class is a bright row in the first channel: learnable in a few epochs."""
    images = torch.rand(count, channels, 8, 8)
    labels = torch.arange(count) % classes
    images[torch.arange(count), 0, labels * 2] += 2.0
    return TensorDataset(images, labels)


@pytest.mark.parametrize(
    ("optimizer", "scheduler", "classes", "channels_last"),
    [
        ("adamw", "onecycle", 3, False),
        ("sgd", "cosine", 2, False),
        ("sgd", "none", 4, False),
        ("adamw", "none", 3, True),
        ("adamw", "onecycle", 3, "auto"),  # on this CPU: NHWC
    ],
)
def test_training_reduces_the_loss(optimizer, scheduler, classes, channels_last):
    torch.manual_seed(0)
    channels = 3  # NHWC and NCHW strides differ only with more than one channel
    train, held_out = bright_row_images(64, classes, channels), bright_row_images(64, classes, channels)
    train_loader = DataLoader(train, batch_size=16, shuffle=True)
    held_out_loader = DataLoader(held_out, batch_size=32)  # validation: images the model never trains on
    module = classifier(
        classes, channels, optimizer=optimizer, scheduler=scheduler, lr=0.05, channels_last=channels_last
    )
    # no_grad, not inference_mode: inference tensors left in the metrics would break fit's own validation
    trainer = quiet_trainer(max_epochs=8, inference_mode=False)
    (untrained,) = trainer.validate(module, held_out_loader, verbose=False)
    trainer.fit(module, train_loader, held_out_loader)
    trained = trainer.callback_metrics
    assert trained["val/loss"] < 0.5 * untrained["val/loss"]  # on the held-out images, before and after
    assert trained["val/acc"] > 0.9
    conv = module.network.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) == (channels_last in (True, "auto"))
    assert module.channels_last == (channels_last in (True, "auto"))
    assert all(group["fused"] for group in trainer.optimizers[0].param_groups)  # on the CPU: one kernel a step


@pytest.mark.parametrize("classes", [2, 3])
def test_epoch_metrics_are_the_exact_means_over_every_image(classes):
    """The loss and accuracy logged for an epoch are those of all its images, a short last batch weighing less
    (70 images in batches of 16), and the sanity check's batches are not counted in the first validation."""
    torch.manual_seed(0)
    train, held_out = bright_row_images(70, classes, 1), bright_row_images(70, classes, 1)
    # an optimiser that leaves the weights as they are: the epoch's metrics are those of this network
    module = classifier(classes, optimizer="sgd", momentum=0.0, weight_decay=0.0, lr=1e-30, scheduler="none")
    quiet_trainer(max_epochs=2, num_sanity_val_steps=2, inference_mode=False).fit(
        module, DataLoader(train, batch_size=16), DataLoader(held_out, batch_size=16)
    )
    metrics = module.trainer.callback_metrics
    with torch.no_grad():
        for stage, data in (("train", train), ("val", held_out)):
            images, labels = data.tensors
            logits = module.eval()(images)
            accuracy = (module.predictions(logits) == labels).float().mean()
            assert torch.isclose(metrics[f"{stage}/acc"], accuracy, atol=1e-6), stage
            assert torch.isclose(metrics[f"{stage}/loss"], module.loss(logits, labels), atol=1e-5), stage
