"""`data/train/run.json`: what the train stage tells evaluate about its MLflow run, the same on every machine.

It travels with the trained model through DVC (a teammate pulls it), so it holds the tracking URI as
params.yaml wrote it: a relative `sqlite:///mlflow.db` means the store of whichever repository reads it.
It imports no MLflow (`cnnpipe predict` reads it to say which run a checkpoint came from, and MLflow's import
costs seconds); evaluation_store.py opens the store it names.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cnnpipe.errors import CnnpipeError


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    tracking_uri: str  # as configured: relative SQLite paths stay relative
    experiment: str
    unlogged: list[str] = field(default_factory=list)  # what train could not log (a server gone away)
    registered_model: str | None = None
    model_version: str | None = None

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def read(cls, path: Path) -> RunRecord:
        if not path.exists():
            raise CnnpipeError(f"{path}: missing; rerun `dvc repro train` so evaluate knows the MLflow run")
        try:
            record = cls(**json.loads(path.read_text()))
            valid = all(isinstance(value, str) for value in (record.run_id, record.tracking_uri, record.experiment))
            valid = valid and isinstance(record.unlogged, list)
        except (ValueError, TypeError):
            valid = False
        if not valid:
            raise CnnpipeError(
                f"{path}: not a cnnpipe run file (JSON with run_id, tracking_uri, experiment, unlogged); "
                "rerun `dvc repro train`"
            )
        return record


def origin_of(checkpoint: Path) -> str:
    """Where a checkpoint came from, for a person: the MLflow run and registered version in the run.json beside it
    (data/train/ has one), or that nothing says so."""
    try:
        record = RunRecord.read(Path(checkpoint).parent / "run.json")
    except CnnpipeError:
        return "no MLflow run recorded beside it"
    version = f", registered {record.registered_model} version {record.model_version}" if record.model_version else ""
    return f"MLflow run {record.run_id} in experiment {record.experiment}{version}"
