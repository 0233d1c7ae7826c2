"""Plain helpers and constants that test files import; the fixtures built on them stay in conftest.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from mlflow.tracking import MlflowClient

if TYPE_CHECKING:
    import pytorch_lightning as pl

REPO = Path(__file__).resolve().parents[1]
BIN = str(Path(sys.executable).parent)  # the venv: dvc, mlflow, torchrun
# small_run_params's MLflow experiment and registered model: named from its data, Fashion-MNIST's three classes
SMALL_RUN = "fashion-mnist-Trouser-Bag-Sneaker"


def stage_runs(root: Path, stage: str = "train") -> tuple[MlflowClient, list]:
    """The runs of one stage in `root`'s store: a training run each, an evaluation run each (a child of its
    training's), and the client that reads them."""
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    experiment = client.get_experiment_by_name(SMALL_RUN).experiment_id
    return client, client.search_runs([experiment], f"tags.`cnnpipe.stage` = '{stage}'")


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


def sh(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env)
    assert result.returncode == 0, f"{args}: {result.stdout[-3000:]}{result.stderr[-3000:]}"
    return result


def dvc_repo(root: Path, raw: dict[str, Any]) -> Path:
    """A fresh clone's worth of the project in `root`: dvc.yaml, `raw` as params.yaml, the code, a git commit."""
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(REPO / "pipelines", root / "pipelines")
    shutil.copytree(REPO / "networks", root / "networks", ignore=shutil.ignore_patterns("__pycache__"))
    raw["mlflow"]["tracking_uri"] = "sqlite:///mlflow.db"  # the default: relative to the repository
    write_params(root / "params.yaml", raw)
    sh("git", "init", "-q", cwd=root)
    sh("dvc", "init", "-q", cwd=root)
    sh("dvc", "config", "core.analytics", "false", cwd=root)
    sh("git", "add", "-A", cwd=root)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init", cwd=root)
    return root


def quiet_trainer(**options: Any) -> pl.Trainer:
    """A Lightning Trainer on the CPU that writes and prints nothing: no logger, checkpoints, progress bar or
    model summary. `options` are the test's own Trainer arguments (epochs, batch limits, devices, strategy...)."""
    import pytorch_lightning as pl  # here, not at the top: most test files never need Lightning

    quiet = {
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return pl.Trainer(**{**quiet, **options})
