"""What the hardware computes fast, for the `auto` settings: decided by its features, not by one machine's timing.

bf16 autocast pays only where the CPU has bf16 instructions (x86 `avx512_bf16` or `amx_bf16`, Arm `bf16`):
AMD EPYC with avx512_bf16, 2 cores, default network: 2.0x the images/s of fp32 with channels_last, 2.8x of
fp32 NCHW (docs/benchmarks.md). Without them, oneDNN emulates bf16 and gains nothing, so fp32 stays.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import torch
from pytorch_lightning.accelerators import CUDAAccelerator, MPSAccelerator

BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # x86 (AVX-512, AMX) and Arm (FEAT_BF16) names in cpuinfo
CPUINFO = Path("/proc/cpuinfo")


@cache
def cpu_has_bf16(cpuinfo: Path = CPUINFO) -> bool:
    """Whether the CPU has native bf16 arithmetic, from the flags Linux lists (elsewhere: assumed not)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return bool(BF16_CPU_FLAGS & set(value.split()))
    return False


def chosen_accelerator(accelerator: str) -> str:
    """The device kind Lightning's `auto` picks (CUDA, then MPS, then CPU), as one of cpu, cuda, mps."""
    if accelerator == "auto":
        return "cuda" if CUDAAccelerator.is_available() else "mps" if MPSAccelerator.is_available() else "cpu"
    return "cuda" if accelerator == "gpu" else accelerator


def auto_precision(accelerator: str) -> str:
    """bf16-mixed where the device has bf16 units (a CPU with its instructions, an Ampere or newer GPU),
    else 32-true: float16 AMP on older GPUs and MPS stay a choice one makes by name."""
    device = chosen_accelerator(accelerator)
    if device == "cuda":
        return "bf16-mixed" if torch.cuda.is_bf16_supported(including_emulation=False) else "32-true"
    return "bf16-mixed" if device == "cpu" and cpu_has_bf16() else "32-true"


def auto_workers(accelerator: str, augments_online: bool) -> int:
    """DataLoader workers for `train.num_workers: auto`. Beside a GPU the cores are free for the data: up to 8
    worker processes augment the next batches, one core kept for the training process. On a CPU the convolutions
    already keep every core busy, and a worker gained nothing (AMD EPYC, 2 cores: 6,774 against 7,118 images/s
    inline, docs/benchmarks.md): none. Without online augmentation a batch is a memory copy: none."""
    if not augments_online or chosen_accelerator(accelerator) == "cpu":
        return 0
    return max(1, min(8, len(os.sched_getaffinity(0)) - 1))
