"""Warm restarts: the checkpoint folder remembers which configuration it belongs to and its MLflow run.

DVC deletes a stage's outputs before it reruns it unless they are `persist: true`; the checkpoint folder is
persisted, and this state decides whether its `last.ckpt` may be resumed: only when it was written by the
very same configuration and data, and that training did not finish.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

STATE_FILE = "state.json"
LAST = "last.ckpt"
BEST = "best.ckpt"
PREEMPTED = "hpc_ckpt_*.ckpt"  # what Lightning's SLURM auto-requeue saves on the preemption signal (SIGUSR1)


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
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(directory / STATE_FILE)


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


def resumable(directory: Path, expected: str) -> ResumeState | None:
    state = ResumeState.read(directory)
    if state and state.fingerprint == expected and not state.completed and latest_checkpoint(directory, expected):
        return state
    return None


def clear(directory: Path) -> None:
    """Removes checkpoints of another configuration (already logged to MLflow by the run that made them)."""
    for path in (directory / LAST, directory / BEST, directory / STATE_FILE):
        path.unlink(missing_ok=True)
    for folder in directory.glob(preemption_dir(directory, "*").name):
        shutil.rmtree(folder)
