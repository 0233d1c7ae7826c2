"""The default pipeline, stage by stage: seconds per stage, share of the whole, and the no-op `dvc repro`.

Runs in a temporary git + DVC repository holding this checkout's dvc.yaml, params.yaml and code, so the
workspace's own outputs are left alone. Takes as long as `make repro` (about 7 minutes on 2 cores).
Usage: .venv/bin/python benchmarks/pipeline.py [-S key=value ...]   (overrides as in `dvc exp run -S`)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from cnnpipe.config import Params, parse_params, read_params_file
from cnnpipe.errors import CnnpipeError

REPO = Path(__file__).resolve().parents[1]
STAGES = ("pull", "augment", "train", "evaluate")


def run(*args: str, cwd: Path) -> float:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    start = time.perf_counter()
    subprocess.run(args, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def override(params: dict, assignment: str) -> None:
    """One `dvc exp run -S` assignment, KEY=VALUE with VALUE read as YAML, made in the raw params in place; a
    missing section is added, as DVC adds it. ValueError says what is wrong."""
    key, equals, value = assignment.partition("=")
    *parents, leaf = key.split(".")
    if not equals or not leaf:
        raise ValueError("write KEY=VALUE, e.g. train.epochs=30")
    section = params
    for parent in parents:
        section = section.setdefault(parent, {})
        if not isinstance(section, dict):
            raise ValueError(f"{parent} is no section of the params")
    section[leaf] = yaml.safe_load(value)


def overridden(params_file: Path, overrides: list[str], flag: str = "--set") -> tuple[dict, Params]:
    """The params file with `dvc exp run -S`-style KEY=VALUE overrides: raw (for a params.yaml of a run) and
    validated. CnnpipeError names the file, or the override by `flag`, and what is wrong."""
    raw = read_params_file(params_file)
    for assignment in overrides:
        try:
            override(raw, assignment)
        except ValueError as error:
            raise CnnpipeError(f"{flag} {assignment}: {error}") from None
    return raw, parse_params(raw, f"{params_file} with {' '.join(overrides)}" if overrides else str(params_file))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-S", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
            shutil.copy(REPO / name, root / name)
        shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        try:
            params, _ = overridden(REPO / "params.yaml", args.overrides, "-S")
        except CnnpipeError as error:  # a bad -S, an unknown key or value
            print(f"pipeline: error: {error}", file=sys.stderr)
            sys.exit(error.exit_code)
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        for command in (
            ("git", "init", "-q"),
            ("dvc", "init", "-q"),
            ("git", "add", "-A"),
            ("git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "bench"),
        ):
            run(*command, cwd=root)
        seconds = {stage: run("dvc", "repro", "--single-item", stage, cwd=root) for stage in STAGES}
        noop = min(run("dvc", "repro", cwd=root) for _ in range(3))
        total = sum(seconds.values())
        print(f"{'stage':10s} {'seconds':>8s} {'share':>6s}")
        for stage, value in seconds.items():
            print(f"{stage:10s} {value:8.1f} {value / total:6.1%}")
        print(f"{'total':10s} {total:8.1f}")
        print(f"no-op dvc repro: {noop:.2f} s ({noop / total:.2%} of a full run)")
        train = json.loads((root / "metrics/train.json").read_text())
        test = json.loads((root / "metrics/test.json").read_text())
        with (root / "metrics/train_history.csv").open() as handle:  # throughput is no headline of train.json
            speeds = [float(row["images_per_sec"]) for row in csv.DictReader(handle)]
        print(
            f"test accuracy {test['test/acc']:.4f}, loss {test['test/loss']:.4f}; best val/acc "
            f"{train['best/val/acc']:.4f} at epoch {train['best/epoch']}; training {sum(speeds) / len(speeds):.0f} "
            f"images/s over {len(speeds)} epochs"
        )


if __name__ == "__main__":
    main()
