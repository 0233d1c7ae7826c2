"""SLURM's warning before a time limit or preemption (`sbatch --signal=USR1@120 --requeue`), handled safely.

Lightning's own handler saves the checkpoint inside the signal handler, at whatever point the signal lands.
Under DDP that checkpoint's barrier meets another rank's gradient all-reduce or buffer broadcast and both wait
forever: seen on a real two-node Slurm 22.05 cluster (Lightning issue #21406). Here the handler only notes the
signal; after each training batch the ranks agree whether any of them got it, then every rank saves the
checkpoint at that same point, rank 0 requeues the job, and training stops as interrupted (its MLflow run
KILLED). The requeued job resumes from that checkpoint into the same run (see resume.py).

SIGTERM (scancel, a time limit without --signal, `kill`) stops the training too, its run KILLED and exit code 143:
see cnnpipe.signals.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytorch_lightning as pl

from cnnpipe import signals
from cnnpipe.console import warn
from cnnpipe.models import resume


def job_id() -> str:
    """What `scontrol requeue` takes: the job, or the array job's task."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array else os.environ["SLURM_JOB_ID"]


class RequeueOnSignal(pl.Callback):
    def __init__(self, folder: Path, signum: int = signal.SIGUSR1):
        """`folder`: where the checkpoint goes, under the name Lightning's SLURM support gives it."""
        self.folder, self.signum = Path(folder), signum
        self.received = False

    def _note(self, signum, frame) -> None:  # a signal handler: no I/O, no collective, only a flag
        self.received = True

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        signal.signal(self.signum, self._note)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # a signal after training (while rank 0 logs the model) is ignored: by default it would kill the task
        signal.signal(self.signum, signal.SIG_IGN)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        # every rank reaches this after the same batch: one small all-reduce, as Lightning's own SIGTERM check
        if not trainer.strategy.reduce_boolean_decision(self.received, all=False):
            return
        checkpoint = self.folder / f"hpc_ckpt_{os.environ.get('SLURM_RESTART_COUNT', '0')}.ckpt"
        trainer.save_checkpoint(checkpoint)  # on every rank: it ends in a barrier
        # The requeue makes SLURM send SIGTERM: it must not cut into the run's ending (SIGKILL follows if we linger)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signals.expect_requeue()
        if trainer.is_global_zero:
            requeued = subprocess.run(["scontrol", "requeue", job_id()], capture_output=True, text=True)
            if requeued.returncode != 0:
                warn(f"scontrol requeue {job_id()} failed: {requeued.stderr.strip()}; resubmit to resume")
            warn(f"SLURM's signal {self.signum}: saved {checkpoint}; the requeued job resumes from it")
        raise KeyboardInterrupt  # on every rank at once: Lightning ends the run KILLED and exits

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A finished training's checkpoint is never resumed; Lightning would, on SLURM, when a new training of the
        same configuration finds one in its folder."""
        if trainer.is_global_zero:
            for checkpoint in self.folder.glob(resume.PREEMPTED):
                checkpoint.unlink()
