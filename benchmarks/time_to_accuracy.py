"""Time to accuracy: the whole pipeline (pull, augment, train, evaluate) of a params file, in process, per seed.

Prints the validation accuracy after each epoch against the wall seconds since the pipeline started, the test
accuracy at the end (as evaluate reports it; beside it without test-time augmentation and with the flip alone),
and the mean over the seeds: the figure the default pipeline is judged by (issue 13).
Each seed runs in a fresh folder with its own MLflow store; the dataset cache of params.yaml is shared.
Usage: .venv/bin/python benchmarks/time_to_accuracy.py [--params params.yaml] [--seeds 0 1 2] [--set KEY=VALUE ...]
  --set model.preset=resnet-small --set train.epochs=30   # pipelines/recipes/accurate.sh's set, as dvc exp run -S
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from machine import cpu_model  # benchmarks/ is the script's own folder, first on sys.path
from pipeline import overridden

from cnnpipe.analysis.predictions import predict
from cnnpipe.config import Params
from cnnpipe.data.store import load_store
from cnnpipe.errors import CnnpipeError
from cnnpipe.models.hardware import inference_device
from cnnpipe.models.module import load_model
from cnnpipe.paths import Paths
from cnnpipe.stages import augment, evaluate, pull, train


def plain_and_flipped(paths: Paths, params: Params) -> tuple[float, float]:
    """The test accuracy of the trained model on the plain test images and with the test-time flip alone: what
    evaluate's test-time augmentation adds, part by part."""
    _, splits = load_store(paths.pulled)
    model = load_model(paths.trained / "model.ckpt").to(
        inference_device(params.train.accelerator, params.train.devices)
    )
    test, batch_size = splits["test"], params.evaluate.batch_size
    results = (predict(model, test.images, test.labels, batch_size, mirror) for mirror in (False, True))
    plain, flipped = (float((result.predicted == result.labels).mean()) for result in results)
    return plain, flipped


def one_seed(
    params: Params, params_file: Path, seed: int
) -> tuple[list[tuple[int, float, float]], float, float, float, float]:
    """[(epoch, seconds since start, val/acc)], test accuracy, total seconds, test accuracy without TTA and with
    the flip alone."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        params = params.model_copy(
            update={
                "seed": seed,
                "mlflow": params.mlflow.model_copy(update={"tracking_uri": f"sqlite:///{root}/mlflow.db"}),
            }
        )
        paths = Paths.under(root, params_file)
        started, wall = time.perf_counter(), time.time()
        for stage in (pull, augment, train):
            stage.run(params, paths)
        test = evaluate.run(params, paths)["test/acc"]
        total = time.perf_counter() - started
        with (paths.metrics / "train_history.csv").open() as handle:
            rows = list(csv.DictReader(handle))
        plain, flipped = plain_and_flipped(paths, params)
    curve = [(int(row["epoch"]), float(row["finished_at"]) - wall, float(row["val/acc"])) for row in rows]
    return curve, test, total, plain, flipped


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="as dvc exp run -S")
    args = parser.parse_args()
    try:
        _, params = overridden(args.params, args.set)
    except CnnpipeError as error:  # no params file, a bad --set, an unknown key or value (named as train names it)
        print(f"time_to_accuracy: error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    results = {seed: one_seed(params, args.params, seed) for seed in args.seeds}
    print(f"\n{datetime.now(UTC):%Y-%m-%d}, {cpu_model()}, params {args.params} {' '.join(args.set)}")
    print(f"{'epoch':>5} " + " ".join(f"{f'seed {seed}: s, val/acc':>24}" for seed in args.seeds))
    for index in range(max(len(curve) for curve, *_ in results.values())):
        cells = []
        for curve, *_ in results.values():
            cells.append(f"{curve[index][1]:12.1f} {curve[index][2]:11.4f}" if index < len(curve) else " " * 24)
        print(f"{index:5d} " + " ".join(cells))
    _, tests, totals, plains, flips = zip(*results.values(), strict=True)
    for seed, (_, test, total, plain, flipped) in results.items():
        print(
            f"seed {seed}: test accuracy {test:.4f} ({plain:.4f} without TTA, {flipped:.4f} with the flip alone) "
            f"after {total:.0f} s, pull to evaluate"
        )
    print(
        f"mean of {len(tests)} seeds: test accuracy {statistics.fmean(tests):.4f} (lowest {min(tests):.4f}; without "
        f"TTA {statistics.fmean(plains):.4f}, flip alone {statistics.fmean(flips):.4f}), "
        f"{statistics.fmean(totals):.0f} s"
    )


if __name__ == "__main__":
    main()
