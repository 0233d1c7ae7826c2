"""What the hardware computes fast, for the `auto` settings: decided by its features, not by one machine's timing.

bf16 autocast pays only where the CPU has bf16 instructions (x86 `avx512_bf16` or `amx_bf16`, Arm `bf16`):
AMD EPYC with avx512_bf16, 2 cores, default network: 2.0x the images/s of fp32 with channels_last, 2.8x of
fp32 NCHW (docs/benchmarks.md). Without them, oneDNN emulates bf16 and gains nothing, so fp32 stays.
"""

from __future__ import annotations

import ctypes
import os
import platform
from functools import cache
from pathlib import Path

import torch
from pytorch_lightning.accelerators import CPUAccelerator, CUDAAccelerator, MPSAccelerator

BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # x86 (AVX-512, AMX) and Arm (FEAT_BF16) names in cpuinfo
CPUINFO = Path("/proc/cpuinfo")
# glibc's mallopt() parameters (malloc.h) and the values keep_freed_memory() sets
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20  # the largest glibc accepts on 64-bit (half its heap size): bigger blocks stay mmap()ed
TRIM_THRESHOLD = 256 << 20  # freed memory at the heap's top kept for the next step instead of handed back
FUSED_OPTIMIZER_DEVICES = frozenset({"cpu", "cuda"})  # torch has more (mps, xpu, ...): unrun here
NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"  # set to 1 by Lightning on import
NVML_LIBRARY = "libnvidia-ml.so.1"


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


def inference_device(accelerator: str, devices: int | list[int] | str) -> torch.device:
    """Where evaluate runs the trained model: the kind of device the training ran on, its first listed GPU where
    `train.devices` lists them and this machine has it; the CPU where this machine lacks that kind (a model
    trained elsewhere and pulled). A GPU-trained wide ResNet's 18 test-time views of 10,000 images are minutes of
    CPU work."""
    kind = chosen_accelerator(accelerator)
    if not {"cuda": CUDAAccelerator, "mps": MPSAccelerator}.get(kind, CPUAccelerator).is_available():
        return torch.device("cpu")
    listed = isinstance(devices, list) and kind == "cuda" and devices[0] < torch.cuda.device_count()
    return torch.device(kind, devices[0] if listed else None)


def auto_precision(accelerator: str) -> str:
    """bf16-mixed where the device has bf16 units (a CPU with its instructions, an Ampere or newer GPU),
    else 32-true: float16 AMP on older GPUs and MPS stay a choice one makes by name."""
    device = chosen_accelerator(accelerator)
    if device == "cuda":
        return "bf16-mixed" if torch.cuda.is_bf16_supported(including_emulation=False) else "32-true"
    return "bf16-mixed" if device == "cpu" and cpu_has_bf16() else "32-true"


def uses_channels_last(setting: bool | str, device: str, precision: str) -> bool:
    """`train.channels_last` resolved for a device and precision: `auto` picks NHWC on a CPU (AMD EPYC, 2 cores:
    1.36x the images/s of NCHW in fp32 training, 1.7x in evaluation; docs/benchmarks.md) and with 16-bit precision
    on a GPU (tensor cores want NHWC), not for fp32 on a GPU."""
    if setting != "auto":
        return bool(setting)
    return device == "cpu" or precision in ("16-mixed", "bf16-mixed")


def fused_optimizer(device: torch.device) -> bool | None:
    """torch's optimizers' `fused` argument for `device`: True (all parameters updated in one kernel, not a loop of
    small operations per parameter) where torch has the kernels for AdamW and SGD and we ran them, the CPU and
    CUDA; None elsewhere, torch's own choice, which an explicit False would narrow (it also turns off foreach).
    On the default network (AMD EPYC, 2 cores, bf16 + channels_last) a step took 0.4-1.0 ms less, 4-6% of its
    images/s (docs/benchmarks.md); the update is the same arithmetic. nanoGPT does the same."""
    return True if device.type in FUSED_OPTIMIZER_DEVICES else None


def auto_workers(accelerator: str, augments_online: bool) -> int:
    """DataLoader workers for `train.num_workers: auto`. Beside a GPU the cores are free for the data: up to 8
    worker processes augment the next batches, one core kept for the training process. On a CPU the convolutions
    already keep every core busy, and a worker gained nothing (AMD EPYC, 2 cores: 6,774 against 7,118 images/s
    inline, docs/benchmarks.md): none. Without online augmentation a batch is a memory copy: none."""
    if not augments_online or chosen_accelerator(accelerator) == "cpu":
        return 0
    return max(1, min(8, len(os.sched_getaffinity(0)) - 1))


def keep_freed_memory() -> bool:
    """Lets glibc's malloc keep the memory of freed tensors for the next training step: whether it could.

    By default glibc maps each new block over a threshold that starts at 128 KiB with mmap() and returns it on
    free(), and hands back the heap's free top over a similar one: each step's activations are page-faulted in
    anew and zeroed by the kernel. In a fresh process that cost the default network a third of its images/s
    (AMD EPYC, 2 cores, bf16 + channels_last: 7,400-8,200 against 11,700-13,000, kernel time 3.9 s against
    0.6 s; docs/benchmarks.md). Both thresholds must be set: setting one stops glibc from raising the other.
    Our own code because the libraries that fix this (jemalloc, tcmalloc) replace malloc only by LD_PRELOAD of
    a system package before the process starts; elsewhere than glibc (macOS, musl) nothing changes.
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)  # this process's own C library
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def skip_absent_nvml() -> bool:
    """Stops torch looking for NVIDIA's NVML library on every optimizer step where the library is absent: whether
    it did.

    Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1 so that asking whether CUDA is there asks NVML and leaves CUDA
    uninitialised (fork-safe DataLoader workers). Every `optimizer.step()` asks. Without the library torch tries
    to load it, fails, and asks the CUDA runtime anyway, as with the variable unset: 0.36 ms of a 14 ms CPU step
    (AMD EPYC, 2 cores; docs/benchmarks.md). Where NVML exists, nothing changes.
    """
    if os.environ.get(NVML_CHECK) != "1":
        return False
    try:
        ctypes.CDLL(NVML_LIBRARY)
    except OSError:
        os.environ[NVML_CHECK] = "0"
        return True
    return False
