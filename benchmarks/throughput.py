"""Training throughput of the train stage under different device settings, side by side in one run.

Each variant is a real `cnnpipe train` (the DDP ones launch their own processes) on this checkout's pulled
data, in its own temporary folder with a SQLite store; images/s comes from metrics/train.json (training
batches only, all ranks together). Run `make repro` or `cnnpipe pull && cnnpipe augment` first.
Usage:
  .venv/bin/python benchmarks/throughput.py               # CPU: one process, channels_last, 2-process DDP (gloo)
  .venv/bin/python benchmarks/throughput.py --gpu         # GPU: 32-true, bf16-mixed, bf16 + channels_last
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CPU_VARIANTS = {
    "1 process, 32-true": {"accelerator": "cpu", "devices": 1},
    "1 process, channels_last": {"accelerator": "cpu", "devices": 1, "channels_last": True},
    "DDP 2 processes (gloo)": {"accelerator": "cpu", "devices": 2, "strategy": "ddp"},
}
GPU_VARIANTS = {
    "1 GPU, 32-true": {"accelerator": "gpu", "devices": 1},
    "1 GPU, bf16-mixed": {"accelerator": "gpu", "devices": 1, "precision": "bf16-mixed"},
    "1 GPU, bf16-mixed + channels_last": {
        "accelerator": "gpu",
        "devices": 1,
        "precision": "bf16-mixed",
        "channels_last": True,
    },
}


def images_per_second(raw: dict, train: dict, batches: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for data in ("pulled", "augmented"):
            shutil.copytree(REPO / "data" / data, root / "data" / data)
        variant = {**raw, "train": {**raw["train"], "epochs": 2, "limit_train_batches": batches, **train}}
        variant["mlflow"] = {**raw["mlflow"], "tracking_uri": f"sqlite:///{root}/mlflow.db"}
        (root / "params.yaml").write_text(yaml.safe_dump(variant, sort_keys=False))
        subprocess.run([sys.executable, "-m", "cnnpipe", "train"], cwd=root, check=True, capture_output=True)
        return json.loads((root / "metrics/train.json").read_text())["images_per_sec"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="the GPU variants instead of the CPU ones")
    parser.add_argument("--batches", type=int, default=100, help="training batches per epoch and process")
    args = parser.parse_args()
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    variants = GPU_VARIANTS if args.gpu else CPU_VARIANTS
    results = {name: images_per_second(raw, train, args.batches) for name, train in variants.items()}
    baseline = next(iter(results.values()))
    print(f"\n{'variant':40} {'images/s':>10} {'ratio':>7}   (batch {raw['train']['batch_size']} per process)")
    for name, value in results.items():
        print(f"{name:40} {value:10.0f} {value / baseline:7.2f}")


if __name__ == "__main__":
    main()
