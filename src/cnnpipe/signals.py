"""SIGTERM, what `kill`, scancel and a SLURM time limit send, stops a stage as Ctrl-C does: its MLflow run ends
KILLED, never left RUNNING, and the process exits 143. Here, at the floor, because the CLI wraps every stage in it
and only train imports Lightning.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, scancel, a SLURM time limit without --signal): the training stops as after Ctrl-C, its run
    KILLED, and the process exits 143 (128 + 15), what a shell and SLURM report for a job that SIGTERM ended."""

    exit_code = 128 + signal.SIGTERM

    def __init__(self, message: str = "terminated (SIGTERM)"):
        super().__init__(message)


_requeued = threading.Event()  # the SIGTERM of `scontrol requeue` follows: it must not cut into the run's ending


def _terminate(signum, frame) -> None:
    """Lightning's own SIGTERM handler calls this one too while its loops run: it stops them at the next batch's
    end, on every DDP rank at the same batch (SIGTERMException), so this one leaves it to Lightning. Before the
    loops (the run opening) and after them (the model being logged) SIGTERM stops at once, as Ctrl-C does; after
    a requeue (Lightning puts this handler back when it tears down) it is ignored."""
    if signal.getsignal(signal.SIGTERM) is _terminate and not _requeued.is_set():
        raise Terminated


@contextmanager
def stopped_by_sigterm() -> Iterator[None]:
    """SIGTERM raises `Terminated` inside the block (its default would end the process before an open MLflow run
    is ended: RUNNING for ever). The CLI runs every stage inside it. Lightning's INFO line of each rank
    (`Received SIGTERM: 15`) is left out: the CLI says it once."""
    lightning = logging.getLogger("pytorch_lightning.trainer.connectors.signal_connector")
    previous, level = signal.signal(signal.SIGTERM, _terminate), lightning.level
    _requeued.clear()
    lightning.setLevel(logging.WARNING)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        lightning.setLevel(level)


def expect_requeue() -> None:
    """`scontrol requeue` (models/requeue.py) is about to send SIGTERM: from now on it is ignored."""
    _requeued.set()
