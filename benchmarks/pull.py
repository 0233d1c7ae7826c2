"""`pull` of an image folder: peak resident memory and images/s as the folder grows 16x, on 1 and 2 processes.

Generates one folder of 10 classes of small JPEGs (--size px) and hard-links its first 10k and 40k images into
two more, then pulls each on 1 and 2 cores (the pull process and its workers pinned to them, data.workers the same
number), every pull in a fresh process (as `dvc repro` runs it).
Memory is the peak resident set of the pull process and of its largest decoding worker (getrusage; the workers
are forked from the pull process, so they share its pages); images/s counts the whole stage (listing, header
checks, decoding, writing the store, checksums, mean and std); CPU seconds show how the work divides between the
pull process (torch's import included) and the workers on a machine that others share.
Usage: .venv/bin/python benchmarks/pull.py [--counts 10000 40000 160000] [--cores 1 2] [--size 64] [--dir D]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from machine import cpu_model  # benchmarks/ is the script's own folder, first on sys.path
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CLASSES = 10


def _write_images(task: tuple[Path, int, int, int]) -> None:
    folder, first, count, size = task
    rng = np.random.default_rng(first)
    for index in range(first, first + count):
        base = rng.integers(0, 256, 3)
        pixels = (base + rng.integers(-40, 40, (size, size, 3))).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{index:07d}.jpg", quality=90)


def make_folders(root: Path, counts: list[int], size: int) -> dict[int, Path]:
    """The largest folder written on every core, the smaller ones as hard links to its first images."""
    largest = max(counts)
    full = root / f"images-{largest}"
    if not full.exists():
        per_class = largest // CLASSES
        tasks = []
        for label in range(CLASSES):
            (full / f"class{label}").mkdir(parents=True)
            for start in range(0, per_class, 1000):
                tasks.append((full / f"class{label}", label * per_class + start, min(1000, per_class - start), size))
        with multiprocessing.Pool() as pool:
            pool.map(_write_images, tasks)
    folders = {largest: full}
    for count in counts:
        folder = root / f"images-{count}"
        if not folder.exists():
            for class_dir in sorted(full.iterdir()):
                (folder / class_dir.name).mkdir(parents=True)
                for image in sorted(class_dir.iterdir())[: count // CLASSES]:
                    os.link(image, folder / class_dir.name / image.name)
        folders[count] = folder
    return folders


def pull_once(folder: Path, cores: int, size: int, out: Path) -> dict[str, float]:
    """Runs in a fresh process: the pull stage on `folder` with data.workers = `cores`, the process and its workers
    pinned to that many cores (so 1 core really is one), timed, with its peak memory."""
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])
    from cnnpipe.config import parse_params
    from cnnpipe.paths import Paths
    from cnnpipe.stages import pull

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"].update(source="imagefolder", path=str(folder), image_size=[size, size], channels=3, workers=cores)
    params = parse_params(raw)
    start = time.perf_counter()
    manifest = pull.run(params, Paths(pulled=out))
    seconds = time.perf_counter() - start
    images = sum(manifest.counts.values())
    own, workers_usage = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "images": images,
        "seconds": seconds,
        "images_per_s": images / seconds,
        "rss_mb": own.ru_maxrss / 1024,
        "worker_rss_mb": workers_usage.ru_maxrss / 1024,
        "cpu_s": own.ru_utime + own.ru_stime,  # the pull process, torch's import included
        "worker_cpu_s": workers_usage.ru_utime + workers_usage.ru_stime,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[10_000, 40_000, 160_000])
    parser.add_argument("--cores", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--dir", type=Path, default=None, help="where the folders go (default: a temporary one)")
    parser.add_argument("--one", nargs=3, metavar=("FOLDER", "CORES", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        folder, cores, out = args.one
        print(json.dumps(pull_once(Path(folder), int(cores), args.size, Path(out))))
        return
    root = args.dir or Path(tempfile.mkdtemp(prefix="cnnpipe-pull-bench-"))
    folders = make_folders(root, args.counts, args.size)
    print(f"{cpu_model()}, {os.cpu_count()} cores; {args.size}x{args.size} RGB JPEGs in {root}")
    print("| images | cores | pull s | images/s | peak RSS pull, worker (MB) | CPU s pull, workers |")
    print("|---:|---:|---:|---:|---:|---:|")
    for count in args.counts:
        for cores in args.cores:
            command = [sys.executable, __file__, "--size", str(args.size), "--one"]
            command += [str(folders[count]), str(cores), str(root / "pulled")]
            result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=True)
            row = json.loads(result.stdout.strip().splitlines()[-1])
            print(
                f"| {count:,} | {cores} | {row['seconds']:.1f} | {row['images_per_s']:,.0f} | "
                f"{row['rss_mb']:,.0f}, {row['worker_rss_mb']:,.0f} | {row['cpu_s']:.1f}, {row['worker_cpu_s']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
