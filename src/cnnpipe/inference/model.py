"""A trained classifier as predict and export use it, wherever it came from: a checkpoint or an MLflow model.

Every source gives the same three things: the class names in output order, the input shape [C, H, W], and a
function from float32 images [N, C, H, W] in [0, 1] to class probabilities [N, K].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cnnpipe.models.module import Predictor, load_model

Probabilities = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Classifier:
    source: str  # as the user named it: a checkpoint path or an MLflow model URI
    classes: list[str]
    shape: tuple[int, int, int]  # [C, H, W]
    probabilities: Probabilities
    predictor: Predictor | None = None  # the PyTorch module, where there is one (a checkpoint)
    origin: str = ""  # for a person: the MLflow run and registered version behind it, where known


def torch_probabilities(module: torch.nn.Module) -> Probabilities:
    def probabilities(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))).float().numpy()

    return probabilities


def from_checkpoint(checkpoint: Path) -> Classifier:
    """A Lightning checkpoint of cnnpipe (data/train/model.ckpt, data/checkpoints/last.ckpt, or a copy)."""
    module = load_model(Path(checkpoint))  # a missing or foreign file: one line naming it
    predictor = Predictor(module.network, module.binary).eval()
    shape = tuple(int(size) for size in module.hparams.input_shape)
    return Classifier(str(checkpoint), list(module.classes), shape, torch_probabilities(predictor), predictor)
