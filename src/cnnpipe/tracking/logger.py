"""The MLflow run of a training, as a Lightning `Logger` passed to `Trainer(logger=...)`.

Lightning opens it on global rank 0 when fit sets up (`experiment`), sends it the epoch metrics the module
logs, and ends it in `finalize`: FINISHED after a successful fit (the end-of-training outputs are written in
`on_fit_end`, before that), FAILED when fit raised, KILLED on Ctrl-C and SIGTERM. However many processes DDP
starts and however often a training resumes, there is one run: a resumed training reopens the run it started.
Every tracking call goes through `TrackedRun`, so a tracking server that goes away never stops the training.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

import torch
from pydantic import BaseModel
from pytorch_lightning.loggers.logger import Logger, rank_zero_experiment
from pytorch_lightning.utilities.exceptions import SIGTERMException
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from cnnpipe.config import MlflowConfig
from cnnpipe.tracking.mlflow_run import TrackedRun, metric_key, start_run
from cnnpipe.tracking.system_metrics import SystemMetrics

STATUS = {"success": "FINISHED", "finished": "FINISHED", "failed": "FAILED"}


class MlflowRunLogger(Logger):
    def __init__(
        self,
        cfg: MlflowConfig,
        resume_run_id: str | None = None,
        on_open: Callable[[TrackedRun], None] | None = None,
    ):
        """`on_open` logs what a new run starts with (params, data); a resumed run has it already."""
        super().__init__()
        self.cfg = cfg
        self.resume_run_id = resume_run_id
        self.on_open = on_open
        self._run: TrackedRun | None = None
        self._monitor: SystemMetrics | None = None
        self._logged_up_to: dict[str, int] = {}  # a resumed run's last step per metric

    @property
    def name(self) -> str:
        return self.cfg.experiment

    @property
    def version(self) -> str | None:
        return self._run.run_id if self._run else None

    @property
    @rank_zero_experiment
    def experiment(self) -> TrackedRun:
        """The run, opened at the first use: inside fit, after every check before it has passed."""
        if self._run is None:
            self._run = start_run(self.cfg, run_id=self.resume_run_id)
            if self.cfg.system_metrics:
                self._monitor = SystemMetrics(self._run.run_id, self._run.tracking_uri, gpu=torch.cuda.is_available())
                self._monitor.start()
            if self.resume_run_id is None and self.on_open is not None:
                self.on_open(self._run)
            if self.resume_run_id is not None:
                self._logged_up_to = self._run.last_steps()
        return self._run

    @property
    def run(self) -> TrackedRun:
        return self.experiment

    @rank_zero_only
    def log_hyperparams(self, params: Mapping[str, Any] | BaseModel, *args: Any, **kwargs: Any) -> None:
        self.experiment.log_params(params)  # flattened to dotted keys there

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Lightning adds `epoch` to what the module logs per epoch: that is the step, as in the history CSV."""
        metrics = {key: float(value) for key, value in metrics.items()}
        epoch = metrics.pop("epoch", None)
        step = int(epoch) if epoch is not None else step or 0
        # A training killed after logging an epoch but before saving its checkpoint redoes that epoch when resumed:
        # what the run has already (under MLflow's keys; opening a resumed run reads them) is not logged twice.
        run = self.experiment
        new = {key: value for key, value in metrics.items() if step > self._logged_up_to.get(metric_key(key), -1)}
        if new:
            run.log_metrics(new, step=step)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._run is None:
            return  # fit failed before the run opened: nothing to end
        if self._monitor is not None:
            self._monitor.stop()
            self._monitor = None
        # Lightning says "failed" for Ctrl-C and SIGTERM too; it calls this while handling their exception.
        interrupted = isinstance(sys.exc_info()[1], KeyboardInterrupt | SIGTERMException)
        self._run.finish("KILLED" if interrupted else STATUS.get(status, "FAILED"))
