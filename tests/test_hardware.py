"""The `auto` precision: decided by the CPU's bf16 instructions as Linux lists them, and by the GPU."""

import os
from pathlib import Path

import pytest

from cnnpipe.config import TrainConfig
from cnnpipe.models.hardware import auto_precision, auto_workers, chosen_accelerator, cpu_has_bf16
from cnnpipe.models.trainer import build_trainer

ZEN4 = "flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_bf16 avx512_vnni\n"
SKYLAKE = "flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512vl avx512dq\n"  # AVX-512, but bf16 only emulated
SAPPHIRE_RAPIDS = "flags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
GRAVITON3 = "Features\t: fp asimd sve bf16 i8mm\n"


@pytest.mark.parametrize(
    ("cpuinfo", "expected"), [(ZEN4, True), (SKYLAKE, False), (SAPPHIRE_RAPIDS, True), (GRAVITON3, True), ("", False)]
)
def test_bf16_is_chosen_by_the_cpus_own_instructions(tmp_path: Path, cpuinfo: str, expected: bool):
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nmodel name\t: some CPU\n" + cpuinfo)
    assert cpu_has_bf16(tmp_path / "cpuinfo") is expected


def test_no_cpuinfo_means_fp32(tmp_path: Path):
    assert cpu_has_bf16(tmp_path / "missing") is False


def test_auto_precision_on_this_cpu_follows_its_flags_and_is_what_lightning_runs(tmp_path: Path):
    expected = "bf16-mixed" if cpu_has_bf16() else "32-true"
    assert chosen_accelerator("cpu") == "cpu"
    assert auto_precision("cpu") == expected
    trainer = build_trainer(TrainConfig(accelerator="cpu", devices=1), tmp_path, tmp_path, [])
    assert trainer.precision == expected
    assert (
        build_trainer(TrainConfig(accelerator="cpu", devices=1, precision="32-true"), tmp_path, tmp_path, []).precision
        == "32-true"
    )


def test_auto_workers_prepare_batches_beside_a_gpu_only():
    cores = len(os.sched_getaffinity(0))
    assert auto_workers("cpu", augments_online=True) == 0  # the cores compute
    assert auto_workers("cpu", augments_online=False) == 0  # a batch is a memory copy
    assert auto_workers("gpu", augments_online=True) == max(1, min(8, cores - 1))
