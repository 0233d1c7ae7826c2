"""Shared fixtures: the repository's own params.yaml as the base every test varies."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def raw_params() -> dict[str, Any]:
    """A fresh copy of params.yaml's contents, to modify in a test."""
    return copy.deepcopy(yaml.safe_load((REPO / "params.yaml").read_text()))


def write_params(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def small_run_params(raw: dict[str, Any], root: Path, **train: Any) -> dict[str, Any]:
    """params.yaml for a quick real run in `root`: three Fashion-MNIST classes, a few batches per epoch."""
    raw["data"]["classes"] = ["Trouser", "Bag", "Sneaker"]
    raw["data"]["cache_dir"] = str(root / "cache")
    raw["train"].update(
        epochs=2, batch_size=32, limit_train_batches=6, limit_val_batches=2, accelerator="cpu", devices=1, threads=1
    )
    raw["train"].update(train)
    raw["evaluate"]["misclassified"] = 6
    raw["mlflow"]["tracking_uri"] = f"sqlite:///{root}/mlflow.db"
    return raw


def run_cnnpipe(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "cnnpipe", *args], cwd=cwd, capture_output=True, text=True)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result
