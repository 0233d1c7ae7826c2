"""Where evaluate (and export) log: a run of its own, a child of the training run that data/train/run.json names.

The training run's params and end time never change after training, and each evaluation's params are the ones
that produced its test metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.tracking import MlflowClient

from cnnpipe.errors import CnnpipeError
from cnnpipe.tracking.mlflow_run import (
    SQLITE,
    TrackedRun,
    check_reachable,
    create_run,
    experiment_id_for,
    follow_moved_store,
    resolve_tracking_uri,
    run_tags,
    sqlite_problem,
    unusable,
)
from cnnpipe.tracking.run_record import RunRecord

TRAIN_RUN_TAG = "cnnpipe.train_run_id"  # on an evaluation run: the training it evaluated
EVALUATION_RUN_TAG = "cnnpipe.evaluation_run_id"  # on a training run: its latest evaluation
HEADLINE = ("test/acc", "test/loss")  # what the training run carries, to be ranked by in the UI


def _store(record: RunRecord, source: Path) -> str:
    """The resolved URI of the record's store, checked: a relative SQLite store is this repository's own
    (created if it is new here); an absolute one must exist, so no folder is ever created elsewhere."""
    uri = resolve_tracking_uri(record.tracking_uri)
    check_reachable(uri)
    if uri.startswith(SQLITE):
        relative = not record.tracking_uri.startswith(SQLITE + "/")
        if problem := sqlite_problem(Path(uri.removeprefix(SQLITE)), create=relative):
            raise CnnpipeError(
                f"{source}: the tracking store {record.tracking_uri} cannot be used here ({problem}); "
                "train with a store this machine has: `dvc repro train`"
            )
    return uri


def _training_run(client: MlflowClient, run_id: str, uri: str) -> Run | None:
    """The training run, or None when this store does not have it."""
    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return None
        raise unusable(uri, exc) from None
    except Exception as exc:  # noqa: BLE001 - a store broken in any other way
        raise unusable(uri, exc) from None


@dataclass(frozen=True)
class EvaluationStore:
    """Where an evaluation will be logged, checked before anything is computed; the run opens in `start`."""

    client: MlflowClient
    record: RunRecord
    training: Run | None  # None: the training was logged to another store (a teammate's machine)

    @property
    def note(self) -> str | None:
        if self.training is not None:
            return None
        return (
            f"MLflow run {self.record.run_id} (the training) is not in {self.client.tracking_uri}: it was "
            f"logged elsewhere; this evaluation is a run of its own, tagged {TRAIN_RUN_TAG}"
        )

    def start(self) -> TrackedRun:
        """A child of the training run, named after it; else a run of its own that names the training."""
        tags = {**run_tags("evaluate"), TRAIN_RUN_TAG: self.record.run_id}
        client, uri = self.client, self.client.tracking_uri
        follow_moved_store(uri, self.record.experiment)
        try:
            if self.training is not None:
                tags["mlflow.parentRunId"] = self.record.run_id
                experiment, name = self.training.info.experiment_id, f"{self.training.info.run_name}-eval"
            else:
                experiment, name = experiment_id_for(client, self.record.experiment), f"eval-{self.record.run_id[:8]}"
            run = create_run(client, experiment, name, tags)
        except CnnpipeError:
            raise
        except Exception as exc:  # noqa: BLE001 - the store broke after the checks: still one line
            raise unusable(uri, exc) from None
        return TrackedRun(client, run.info.run_id, uri)


def report_to_training(training: TrackedRun, evaluation: TrackedRun, metrics: dict[str, float]) -> None:
    """The headline test metrics also on the training run, one step per evaluation (a re-evaluation is a new
    point, not a rewrite), and a tag naming the evaluation run that holds the rest."""

    def log() -> None:
        step = len(training.client.get_metric_history(training.run_id, HEADLINE[0]))
        training.log_metrics({key: metrics[key] for key in HEADLINE}, step)

    training.log_call("test metrics", log)
    training.set_tag(EVALUATION_RUN_TAG, evaluation.run_id)


def _check_training(run: Run, source: Path) -> None:
    """run.json names a training: an evaluation's run, or a run deleted in the store, would take this model's
    evaluation (and export's files) as if it were the training that made it."""
    run_id = run.info.run_id
    if trained := run.data.tags.get(TRAIN_RUN_TAG):
        raise CnnpipeError(
            f"{source}: MLflow run {run_id} is an evaluation (of training run {trained}), not a training; "
            "rerun `dvc repro train` to write the training's run.json"
        )
    if run.info.lifecycle_stage == "deleted":
        raise CnnpipeError(
            f"{source}: MLflow run {run_id} is deleted in the tracking store; restore it with "
            f"`mlflow runs restore --run-id {run_id}`, or train anew: `dvc repro train`"
        )


def evaluation_store(record: RunRecord, source: Path) -> EvaluationStore:
    """Checks the store `source` (run.json) names and looks up the training run in it."""
    uri = _store(record, source)
    client = MlflowClient(tracking_uri=uri)
    training = _training_run(client, record.run_id, uri)
    if training is not None:
        _check_training(training, source)
    return EvaluationStore(client, record, training)
