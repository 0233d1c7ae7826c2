"""What MLflow logging costs a training, measured inside one real training run.

Every tracking call goes through `TrackedRun._try`; this times each one and sets the sum against the
training's own time, split into what happens every epoch (metrics; params at the start) and the one-off
end of the run (checkpoints, figures, receptive-field files and the model, logged and registered).
It then scales both to the default training of params.yaml (all images, train.epochs epochs) from the
measured throughput. Needs the pulled data: run `make repro` or `cnnpipe pull && cnnpipe augment` first.
Usage: .venv/bin/python benchmarks/logging_cost.py [--epochs 3] [--batches 100] [--tracking-uri URI]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from cnnpipe.config import load_params
from cnnpipe.data.store import load_manifest
from cnnpipe.paths import Paths
from cnnpipe.stages import train
from cnnpipe.tracking import mlflow_run


def timed_tracking() -> tuple[dict[str, float], dict[str, float]]:
    """Patches TrackedRun._try to add up the seconds of every tracking call: by kind, and each end-of-run call."""
    spent: dict[str, float] = defaultdict(float)
    end_calls: dict[str, float] = defaultdict(float)
    original = mlflow_run.TrackedRun._try

    def timed(self, what, call):
        started = time.perf_counter()
        try:
            return original(self, what, call)
        finally:
            seconds = time.perf_counter() - started
            per_epoch = what.startswith(("metrics of step", "params"))
            spent["per epoch" if per_epoch else "end of run"] += seconds
            if not per_epoch:
                end_calls[what] += seconds

    mlflow_run.TrackedRun._try = timed
    return spent, end_calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batches", type=int, default=100, help="training batches per epoch")
    parser.add_argument("--tracking-uri", help="default: a fresh SQLite store in a temporary folder")
    args = parser.parse_args()
    params = load_params()
    images_per_epoch = load_manifest(Paths().pulled).counts["train"]
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        uri = args.tracking_uri or f"sqlite:///{root}/mlflow.db"
        short = params.model_copy(
            update={
                "train": params.train.model_copy(update={"epochs": args.epochs, "limit_train_batches": args.batches}),
                "mlflow": params.mlflow.model_copy(  # registered although short: its cost is measured too
                    update={"tracking_uri": uri, "experiment": "logging-cost", "register_model": "always"}
                ),
            }
        )
        spent, end_calls = timed_tracking()
        where = Paths(checkpoints=root / "ckpt", trained=root / "train", metrics=root / "metrics")
        started = time.perf_counter()
        metrics = train.run(short, where)
        total = time.perf_counter() - started

    fit = metrics["train_time_s"]  # training batches only, as EpochHistory measures them
    per_epoch_log = spent["per epoch"] / args.epochs
    print(f"\nshort run: {args.epochs} epochs x {args.batches} batches of {params.train.batch_size}, store {uri}")
    print(f"  training (batches only)      {fit:8.2f} s   {metrics['mean/images_per_sec']:.0f} images/s")
    print(f"  train stage in all           {total:8.2f} s")
    share = per_epoch_log / (fit / args.epochs)
    print(f"  MLflow calls, per epoch      {per_epoch_log * 1000:8.1f} ms  = {share:.3%} of an epoch")
    print(f"  MLflow calls, end of run     {spent['end of run']:8.2f} s, the slowest:")
    for what, seconds in sorted(end_calls.items(), key=lambda item: -item[1])[:5]:
        print(f"    {what:40} {seconds:6.2f} s")
    full_epoch = images_per_epoch / metrics["mean/images_per_sec"]
    full_train = params.train.epochs * full_epoch
    full_log = params.train.epochs * per_epoch_log + spent["end of run"]
    print(
        f"\nthe default training ({params.train.epochs} epochs x {images_per_epoch} images, {full_epoch:.1f} s/epoch):"
    )
    print(f"  training {full_train:.0f} s, MLflow {full_log:.2f} s: logging costs {full_log / full_train:.2%} of it")


if __name__ == "__main__":
    main()
