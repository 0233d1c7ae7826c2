"""Warm restarts: the checkpoint folder remembers which configuration it belongs to and its MLflow run.

DVC deletes a stage's outputs before it reruns it unless they are `persist: true`; the checkpoint folder is
persisted, and this state decides whether its `last.ckpt` may be resumed: only when it was written by the
very same configuration and data, and that training did not finish.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch

from cnnpipe.console import warn
from cnnpipe.outputs import write_atomically

STATE_FILE = "state.json"
LAST = "last.ckpt"
BEST = "best.ckpt"
PREEMPTED = "hpc_ckpt_*.ckpt"  # what Lightning's SLURM auto-requeue saves on the preemption signal (SIGUSR1)
SET_ASIDE = ".unreadable"  # suffix of a checkpoint that cannot be resumed, kept for a person to look at


@dataclass
class ResumeState:
    fingerprint: str
    run_id: str
    tracking_uri: str
    completed: bool = False

    @classmethod
    def read(cls, directory: Path) -> ResumeState | None:
        try:
            return cls(**json.loads((directory / STATE_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            return None  # no state, or one from an older layout: start afresh

    def write(self, directory: Path) -> None:
        write_atomically(directory / STATE_FILE, json.dumps(asdict(self), indent=2))


def fingerprint(*parts: object) -> str:
    """A stable hash of JSON-serialisable configuration and data identities."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def preemption_dir(directory: Path, expected: str) -> Path:
    """The Trainer's default_root_dir: one per configuration.

    Lightning saves its preemption checkpoint there and, on SLURM with no ckpt_path, resumes from whatever it
    finds there; a folder of its own per configuration keeps it from resuming another configuration's weights.
    """
    return directory / f"preempted-{expected[:16]}"


def latest_checkpoint(directory: Path, expected: str) -> Path | None:
    """The newest of last.ckpt (end of an epoch) and a preemption checkpoint (mid-epoch), if any."""
    preempted = preemption_dir(directory, expected).glob(PREEMPTED)
    candidates = [path for path in (directory / LAST, *preempted) if path.exists()]
    return max(candidates, key=lambda path: path.stat().st_mtime, default=None)


@dataclass(frozen=True)
class Resumption:
    run_id: str
    checkpoint: Path


def _unreadable(checkpoint: Path, module: torch.nn.Module) -> str | None:
    """Why Lightning could not resume `checkpoint` into `module` (truncated, foreign, other shapes), or None."""
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)  # plain data: no code runs
    except Exception as exc:  # noqa: BLE001 - pickle, zip, EOF and OS errors alike: not resumable
        return " ".join(str(exc).split())[:120] or type(exc).__name__
    if not isinstance(state, dict) or {"state_dict", "epoch", "loops"} - state.keys():
        return "not a Lightning checkpoint"
    expected = {name: tuple(value.shape) for name, value in module.state_dict().items()}
    found = {name: tuple(getattr(value, "shape", ())) for name, value in state["state_dict"].items()}
    return None if found == expected else "its weights belong to another network"


def _set_aside(checkpoint: Path, reason: str) -> None:
    aside = checkpoint.with_name(checkpoint.name + SET_ASIDE)
    with contextlib.suppress(FileNotFoundError):  # another rank moved it first
        checkpoint.replace(aside)
    warn(f"{checkpoint} cannot be resumed ({reason}): moved to {aside}; training starts afresh")


def resumable(directory: Path, expected: str, module: torch.nn.Module) -> Resumption | None:
    """The checkpoint to resume: written by this very configuration and data, its training unfinished,
    and readable into `module`; an unreadable one is set aside so that it never blocks a later run."""
    state = ResumeState.read(directory)
    if not (state and state.fingerprint == expected and not state.completed):
        return None
    while (checkpoint := latest_checkpoint(directory, expected)) is not None:
        if (reason := _unreadable(checkpoint, module)) is None:
            return Resumption(state.run_id, checkpoint)
        _set_aside(checkpoint, reason)
    return None


def clear(directory: Path) -> None:
    """Removes checkpoints of another configuration (already logged to MLflow by the run that made them)."""
    for path in (directory / LAST, directory / BEST, directory / STATE_FILE):
        path.unlink(missing_ok=True)
    for folder in directory.glob(preemption_dir(directory, "*").name):
        shutil.rmtree(folder)


class ClaimFolder(pl.Callback):
    """Makes the checkpoint folder this training's once training really starts (Lightning has accepted its
    settings, the run is open, the sanity check passed): until then the old checkpoints stay untouched."""

    def __init__(self, directory: Path, fingerprint: str, run: Callable[[], object], resumed: bool):
        self.directory, self.fingerprint, self.run, self.resumed = directory, fingerprint, run, resumed

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        if not self.resumed:
            clear(self.directory)
        run = self.run()
        ResumeState(self.fingerprint, run.run_id, run.tracking_uri).write(self.directory)
