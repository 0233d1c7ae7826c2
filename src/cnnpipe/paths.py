"""Where the DVC stages read and write, relative to the repository root; dvc.yaml names the same paths.

Every stage takes one `Paths`: the defaults under `dvc repro`, another folder in tests and benchmarks, and the
params file that was read (`cnnpipe --params other.yaml`), which train logs as the run's artifact.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    params_file: Path = Path("params.yaml")
    pulled: Path = Path("data/pulled")  # pull: uint8 arrays per split + manifest.json
    augmented: Path = Path("data/augmented")  # augment: pipeline.json, preview.png, augmented copies
    checkpoints: Path = Path("data/checkpoints")  # train: this machine's training in progress, to resume
    trained: Path = Path("data/train")  # train: model.ckpt, run.json (the MLflow run evaluate links to)
    metrics: Path = Path("metrics")  # train.json, test.json, train_history.csv
    plots: Path = Path("plots")  # evaluate: confusion matrix, misclassified grid, predictions.csv
    exported: Path = Path("data/export")  # export: model.onnx, model.pt (TorchScript), export.json

    @classmethod
    def under(cls, root: Path, params_file: Path | None = None) -> Paths:
        """The same layout in another folder (a test's, a benchmark's)."""
        defaults = cls()
        fields = {name: root / getattr(defaults, name) for name in cls.__dataclass_fields__ if name != "params_file"}
        return cls(params_file=params_file or root / defaults.params_file, **fields)
