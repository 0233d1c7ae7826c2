"""Training throughput, side by side in one run: the train stage against a plain PyTorch loop on the same model,
batch, data and augmentation, by precision and memory format (and torch.compile in the plain loop), each as a
share of this machine's measured matmul peak.

The stage variants are real `cnnpipe train` runs in temporary folders (images/s from metrics/train_history.csv:
training batches only, all ranks together). The plain loop is what a person would write by hand: the pulled
store, params.yaml's albumentations pipeline per batch, AdamW with one-cycle (its fused step where the stage takes
it; torch's default step in one more variant), no Lightning. Each variant runs 2 epochs x --batches; the compiled
loops are timed with their compile time and without it. A shared VM's speed
drifts by tens of percent over minutes, so each stage run follows its plain loop, in --rounds rounds.
Run `make repro` (or `cnnpipe pull && cnnpipe augment`) first.
Usage:
  .venv/bin/python benchmarks/throughput.py            # CPU
  .venv/bin/python benchmarks/throughput.py --gpu      # one GPU
  .venv/bin/python benchmarks/throughput.py --set train.batch_size=256 --batches 200   # as dvc exp run -S
"""

from __future__ import annotations

import argparse
import csv
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from machine import cpu_model  # benchmarks/ is the script's own folder, first on sys.path
from pipeline import overridden

from cnnpipe.config import Params
from cnnpipe.data.augmentation import ONLINE, PIPELINE_FILE, augment_images, load_pipeline
from cnnpipe.data.datamodule import to_model_input
from cnnpipe.data.store import load_store
from cnnpipe.errors import CnnpipeError
from cnnpipe.models.hardware import fused_optimizer, keep_freed_memory, skip_absent_nvml
from cnnpipe.models.network import build_model_network, forward_flops

REPO = Path(__file__).resolve().parents[1]
PULLED, AUGMENTED = REPO / "data/pulled", REPO / "data/augmented"


@dataclass(frozen=True)
class Variant:
    name: str
    precision: str  # 32-true | bf16-mixed
    channels_last: bool
    compiled: bool = False
    devices: int = 1
    workers: int = 0  # the stage's DataLoader workers; the plain loop always augments in its own loop
    fused: bool = True  # AdamW's fused step, as the stage takes it (hardware.fused_optimizer); False: plain loop only


CPU_VARIANTS = [
    Variant("fp32, NCHW", "32-true", False),
    Variant("fp32, channels_last", "32-true", True),
    Variant("bf16-mixed, NCHW", "bf16-mixed", False),
    Variant("bf16-mixed, channels_last", "bf16-mixed", True),
    Variant("bf16-mixed, channels_last, 1 loader worker", "bf16-mixed", True, workers=1),
    Variant("bf16-mixed, channels_last, AdamW not fused", "bf16-mixed", True, fused=False),
    Variant("fp32, channels_last, compiled", "32-true", True, compiled=True),
    Variant("bf16-mixed, channels_last, compiled", "bf16-mixed", True, compiled=True),
    Variant("DDP 2 processes (gloo), fp32, channels_last", "32-true", True, devices=2),
]
GPU_VARIANTS = [
    Variant("fp32, NCHW", "32-true", False),
    Variant("bf16-mixed, NCHW", "bf16-mixed", False),
    Variant("bf16-mixed, channels_last", "bf16-mixed", True),
    Variant("bf16-mixed, channels_last, 8 loader workers", "bf16-mixed", True, workers=8),
    Variant("bf16-mixed, channels_last, AdamW not fused", "bf16-mixed", True, fused=False),
    Variant("bf16-mixed, channels_last, compiled", "bf16-mixed", True, compiled=True),
]


def peak_gflops(device: str, dtype: torch.dtype, size: int = 2048, seconds: float = 2.0) -> float:
    """The matmul FLOP/s this device reaches in `dtype`: the ceiling a convolutional network can approach."""
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        count += 1
        if device == "cuda":
            torch.cuda.synchronize()
    return 2 * size**3 * count / (time.perf_counter() - started) / 1e9


def stage_images_per_second(raw: dict, variant: Variant, batches: int, accelerator: str) -> tuple[float, float]:
    """A real `cnnpipe train` in a temporary folder, the train stage as `dvc repro` runs it: (images/s of both
    epochs, of the second alone). A fresh process's first epoch pays its one-off start (oneDNN's kernels are made
    at their first use), which the plain loop, in a process that ran the variant before, does not."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for data in (PULLED, AUGMENTED):
            shutil.copytree(data, root / "data" / data.name)
        train = {
            "epochs": 2,
            "limit_train_batches": batches,
            "accelerator": accelerator,
            "devices": variant.devices,
            "strategy": "ddp" if variant.devices > 1 else "auto",
            "precision": variant.precision,
            "channels_last": variant.channels_last,
            "num_workers": variant.workers,
        }
        params = {**raw, "train": {**raw["train"], **train}}
        params["mlflow"] = {**raw["mlflow"], "tracking_uri": f"sqlite:///{root}/mlflow.db", "register_model": "never"}
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        subprocess.run([sys.executable, "-m", "cnnpipe", "train"], cwd=root, check=True, capture_output=True)
        with (root / "metrics/train_history.csv").open() as handle:
            speeds = [float(row["images_per_sec"]) for row in csv.DictReader(handle)]
        return statistics.fmean(speeds), speeds[1]  # the mean is MLflow's mean/images_per_sec


def plain_loop_images_per_second(params: Params, variant: Variant, batches: int, device: str) -> tuple[float, float]:
    """The same training by hand: (images/s of all steps, images/s without the first epoch's compile/warm-up)."""
    skip_absent_nvml()  # as the stage does: importing cnnpipe imported Lightning, which a loop by hand would not
    keep_freed_memory()  # as the stage does; without it the loop's speed hung on what this process had freed before
    manifest, splits = load_store(PULLED)
    train = splits["train"]
    pipeline = load_pipeline(AUGMENTED / PIPELINE_FILE) if params.augment.online else None
    torch.manual_seed(params.seed)
    _, network = build_model_network(params.model, manifest.shape, manifest.num_classes, manifest.mean, manifest.std)
    network = network.to(device)
    format_ = torch.channels_last if variant.channels_last else torch.contiguous_format
    network = network.to(memory_format=format_)
    model = torch.compile(network) if variant.compiled else network
    cfg, batch = params.train, params.train.batch_size
    fused = fused_optimizer(torch.device(device)) if variant.fused else None  # None: torch's default step
    optimizer = torch.optim.AdamW(network.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=2 * batches)
    rng = np.random.default_rng(params.seed)
    epoch_seconds = []
    for epoch in range(2):
        order = rng.permutation(len(train))
        started = time.perf_counter()
        for step in range(batches):
            index = np.sort(order[step * batch : (step + 1) * batch])
            images, labels = train.images[index], torch.from_numpy(np.asarray(train.labels[index], dtype=np.int64))
            if pipeline is not None:
                images = augment_images(pipeline, images, (params.seed, ONLINE, epoch, step))
            inputs = to_model_input(images).to(device).contiguous(memory_format=format_)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=variant.precision == "bf16-mixed"):
                loss = F.cross_entropy(model(inputs), labels.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        if device == "cuda":
            torch.cuda.synchronize()
        epoch_seconds.append(time.perf_counter() - started)
    images = batches * batch
    return 2 * images / sum(epoch_seconds), images / epoch_seconds[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="the GPU variants instead of the CPU ones")
    parser.add_argument("--batches", type=int, default=100, help="training batches per epoch and process")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of all variants; the table shows their means")
    parser.add_argument("--variant", action="append", help="only the variant of this name (repeatable)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="as dvc exp run -S")
    args = parser.parse_args()
    device, accelerator = ("cuda", "gpu") if args.gpu else ("cpu", "cpu")
    try:
        raw, params = overridden(REPO / "params.yaml", args.set)
    except CnnpipeError as error:  # a bad --set, an unknown key or value
        parser.exit(error.exit_code, f"throughput: error: {error}\n")
    manifest, splits = load_store(PULLED)
    if args.batches > (most := len(splits["train"]) // params.train.batch_size):
        parser.error(f"--batches: at most {most}, the full batches of {params.train.batch_size} in an epoch")
    _, network = build_model_network(params.model, manifest.shape, manifest.num_classes, manifest.mean, manifest.std)
    train_flops = 3 * forward_flops(network, manifest.shape)  # forward + backward, per image
    peaks = {"32-true": peak_gflops(device, torch.float32), "bf16-mixed": peak_gflops(device, torch.bfloat16)}
    where = torch.cuda.get_device_name() if args.gpu else f"{cpu_model()}, {torch.get_num_threads()} threads"
    print(f"{datetime.now(UTC):%Y-%m-%d}, {where}; batch {params.train.batch_size}, {args.batches} batches x 2 epochs")
    print(f"matmul peak: fp32 {peaks['32-true']:.0f} GFLOP/s, bf16 {peaks['bf16-mixed']:.0f} GFLOP/s")
    print(f"training costs {train_flops / 1e6:.2f} MFLOP per image (3x forward)\n")
    header = (
        f"{'variant':44} {'plain loop':>11} {'steady':>8} {'stage':>8} {'steady':>8} {'stage/plain':>11} "
        f"{'steady':>7} {'% of peak':>9}"
    )
    variants = GPU_VARIANTS if args.gpu else CPU_VARIANTS
    if args.variant:
        names = {variant.name for variant in variants}
        if unknown := set(args.variant) - names:
            parser.error(f"--variant: no variant {sorted(unknown)}; choose from {sorted(names)}")
        variants = [variant for variant in variants if variant.name in args.variant]
    runs: dict[str, list[tuple[float, float, float, float]]] = {variant.name: [] for variant in variants}
    for round_ in range(args.rounds):  # a shared VM's speed drifts over minutes: each stage beside its plain loop
        for variant in variants:
            plain = steady = stage = stage_steady = float("nan")
            if variant.devices == 1:
                plain, steady = plain_loop_images_per_second(params, variant, args.batches, device)
            if variant.fused and not variant.compiled:  # options the stage has not: the plain loop shows why
                stage, stage_steady = stage_images_per_second(raw, variant, args.batches, accelerator)
            runs[variant.name].append((plain, steady, stage, stage_steady))
            print(f"round {round_ + 1}: {variant.name}: {plain:.0f} / {stage:.0f} images/s", flush=True)
    print("\n" + header + "\n" + "-" * len(header))
    for variant in variants:
        rounds = runs[variant.name]
        plain, steady, stage, stage_steady = (statistics.fmean(column) for column in zip(*rounds, strict=True))
        ratio = statistics.fmean(row[2] / row[0] for row in rounds)  # per round
        steady_ratio = statistics.fmean(row[3] / row[1] for row in rounds)
        share = 100 * (stage_steady if stage == stage else steady) * train_flops / 1e9 / peaks[variant.precision]
        print(
            f"{variant.name:44} {plain:11.0f} {steady:8.0f} {stage:8.0f} {stage_steady:8.0f} {ratio:11.2f} "
            f"{steady_ratio:7.2f} {share:8.2f}%"
        )
    print(
        f"\nimages/s, means of {args.rounds} rounds; plain loop and stage: all steps; steady: the second epoch only "
        "(after compile and warm-up); stage/plain: the mean of each round's ratio, of all steps and of the steady "
        "epochs; % of peak: the steady stage's (else the plain loop's) training FLOP/s against the matmul peak of its "
        "precision"
    )


if __name__ == "__main__":
    main()
