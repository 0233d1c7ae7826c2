"""An example of your own network: `model.class: networks/small_cnn.py:SmallCNN` (README, "Your own network")."""

from torch import nn


class SmallCNN(nn.Module):
    """Two conv blocks and a global average pool: any image size, greyscale or RGB."""

    def __init__(self, in_channels: int, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            *(nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2)),
            *(nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2)),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, images):
        return self.pool(self.features(images))  # [N, 2 * width, 1, 1]: cnnpipe appends flatten and the head
