"""One MLflow run per pipeline run: train opens it, evaluate logs into the same one.

Uses MlflowClient with an explicit run id rather than mlflow's global "active run", so two stages (and
later a resumed train stage) can address the same run without sharing process state.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

import cnnpipe
from cnnpipe.config import MlflowConfig, Params
from cnnpipe.errors import CnnpipeError


def resolve_tracking_uri(uri: str, root: Path | None = None) -> str:
    """Makes a relative `sqlite:///file.db` absolute (relative to `root`, the repository root by default)."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(((root or Path.cwd()) / uri.removeprefix(prefix)).resolve())
    return uri


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fails fast, before any training, when a tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as response:
            response.read()
    except (urllib.error.URLError, OSError) as exc:
        raise CnnpipeError(
            f"mlflow.tracking_uri: no MLflow tracking server answers at {uri} ({getattr(exc, 'reason', exc)}); "
            "start it, or use sqlite:///mlflow.db for a local store"
        ) from None


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """Nested params as dotted keys (model.layers.0.out); lists of plain values stay one value."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list) and any(isinstance(item, dict | list) for item in value):
        items = ((str(index), item) for index, item in enumerate(value))
    else:
        return {prefix: str(value)}
    flat: dict[str, str] = {}
    for key, item in items:
        flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def metric_key(name: str) -> str:
    """MLflow allows letters, digits, '_', '-', '.', ' ', '/' in metric names (class names may hold others)."""
    return re.sub(r"[^\w\-. /]", "_", name)


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def data_hashes(lock_file: Path = Path("dvc.lock")) -> str | None:
    """The hashes DVC recorded for the pull and augment outputs: which data a run trained on."""
    try:
        stages = yaml.safe_load(lock_file.read_text())["stages"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None
    outs = [out for stage in ("pull", "augment") for out in stages.get(stage, {}).get("outs", [])]
    return " ".join(f"{out['path']}:{out.get('md5', '?')}" for out in outs) or None


def run_tags() -> dict[str, str]:
    tags = {"cnnpipe.version": cnnpipe.__version__, "host": platform.node()}
    if commit := _git("rev-parse", "HEAD"):
        tags["mlflow.source.git.commit"] = commit
        tags["git.dirty"] = str(bool(_git("status", "--porcelain", "--untracked-files=no"))).lower()
    if experiment := os.environ.get("DVC_EXP_NAME"):
        tags["dvc.experiment"] = experiment
    if hashes := data_hashes():
        tags["dvc.data"] = hashes
    return tags


@dataclass
class TrackedRun:
    client: MlflowClient
    run_id: str
    tracking_uri: str

    def log_params(self, params: Params) -> None:
        flat = flatten(params.model_dump(mode="json", by_alias=True))
        # MLflow rejects longer values; the full params.yaml is logged as an artifact next to them.
        entries = [Param(key, value[:MAX_PARAM_VAL_LENGTH]) for key, value in sorted(flat.items())]
        for start in range(0, len(entries), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=entries[start : start + MAX_PARAMS_TAGS_PER_BATCH])

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        entries = [Metric(metric_key(key), float(value), now, step) for key, value in metrics.items()]
        self.client.log_batch(self.run_id, metrics=entries)

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), folder)

    def log_text(self, text: str, name: str) -> None:
        self.client.log_text(self.run_id, text, name)

    def set_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)


def _experiment_id(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name)
    if experiment.lifecycle_stage == "deleted":
        raise CnnpipeError(
            f"mlflow.experiment: '{name}' is deleted in the tracking store; restore it or pick a new name"
        )
    return experiment.experiment_id


def start_run(cfg: MlflowConfig, run_id: str | None = None) -> TrackedRun:
    """Opens a new run, or reopens `run_id` (a resumed training) so its history continues."""
    uri = resolve_tracking_uri(cfg.tracking_uri)
    check_reachable(uri)
    client = MlflowClient(tracking_uri=uri)
    if run_id is not None:
        client.update_run(run_id, status="RUNNING")
        return TrackedRun(client, run_id, uri)
    run_name = cfg.run_name or os.environ.get("DVC_EXP_NAME")
    run = client.create_run(_experiment_id(client, cfg.experiment), run_name=run_name, tags=run_tags())
    return TrackedRun(client, run.info.run_id, uri)


def open_run(tracking_uri: str, run_id: str) -> TrackedRun:
    """The run that the train stage created, for evaluate to log into."""
    check_reachable(tracking_uri)
    return TrackedRun(MlflowClient(tracking_uri=tracking_uri), run_id, tracking_uri)
