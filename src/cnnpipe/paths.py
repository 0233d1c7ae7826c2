"""Where each DVC stage writes, relative to the repository root; dvc.yaml names the same paths."""

from pathlib import Path

PULLED = Path("data/pulled")  # pull: uint8 arrays per split + manifest.json
AUGMENTED = Path("data/augmented")  # augment: pipeline.json, preview.png, augmented copies
CHECKPOINTS = Path("data/checkpoints")  # train: best/last checkpoints, kept across runs to resume
TRAINED = Path("data/train")  # train: model.ckpt, run.json (the MLflow run evaluate logs into)
METRICS = Path("metrics")  # train.json, test.json, train_history.csv
PLOTS = Path("plots")  # evaluate: confusion matrix, misclassified grid, predictions.csv
