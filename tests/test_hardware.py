"""The `auto` precision: decided by the CPU's bf16 instructions as Linux lists them, and by the GPU; and the
allocator setting that keeps a training step's memory from being page-faulted in anew every step; no NVML lookups
on every step where the library is absent; evaluation on the training's device kind; fused optimizer steps."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cnnpipe.config import TrainConfig
from cnnpipe.models.hardware import (
    NVML_CHECK,
    NVML_LIBRARY,
    auto_precision,
    auto_workers,
    chosen_accelerator,
    cpu_has_bf16,
    fused_optimizer,
    inference_device,
    skip_absent_nvml,
    uses_channels_last,
)
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


@pytest.mark.parametrize(
    ("setting", "device", "precision", "expected"),
    [
        ("auto", "cpu", "32-true", True),
        ("auto", "cpu", "bf16-mixed", True),
        ("auto", "cuda", "32-true", False),
        ("auto", "cuda", "bf16-mixed", True),
        ("auto", "cuda", "16-mixed", True),
        (False, "cpu", "bf16-mixed", False),
        (True, "cuda", "32-true", True),
    ],
)
def test_channels_last_auto_follows_the_device_and_precision(setting, device, precision, expected):
    assert uses_channels_last(setting, device, precision) is expected


@pytest.mark.parametrize(
    ("accelerator", "devices", "expected"),
    [("cpu", "auto", "cpu"), ("gpu", 2, "cuda"), ("cuda", [2, 3], "cuda:2"), ("gpu", "auto", "cuda")],
)
def test_evaluation_runs_on_the_trainings_device_kind_or_the_cpu_without_one(accelerator, devices, expected):
    here = expected if torch.cuda.is_available() else "cpu"  # a GPU-trained model pulled to a machine without one
    assert inference_device(accelerator, devices) == torch.device(here)


def test_evaluation_on_auto_goes_where_lightning_trains():
    assert inference_device("auto", "auto").type == chosen_accelerator("auto")


@pytest.mark.parametrize(("device", "expected"), [("cpu", True), ("cuda", True), ("mps", None), ("meta", None)])
def test_optimizers_step_fused_where_torch_has_the_kernels_and_we_ran_them(device, expected):
    """None, not False, elsewhere: False would also turn off torch's foreach step."""
    assert fused_optimizer(torch.device(device)) is expected


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_a_fused_step_updates_the_weights_as_torchs_default_step_does(optimizer):
    """Three steps of the same gradients through both implementations end at the same weights."""
    torch.manual_seed(0)
    start = torch.randn(1000)
    weights = {}
    for fused in (None, True):
        parameter = torch.nn.Parameter(start.clone())
        if optimizer == "adamw":
            step = torch.optim.AdamW([parameter], lr=0.01, weight_decay=0.1, fused=fused)
        else:
            step = torch.optim.SGD([parameter], lr=0.01, momentum=0.9, nesterov=True, weight_decay=0.1, fused=fused)
        for seed in range(3):
            parameter.grad = torch.randn(1000, generator=torch.Generator().manual_seed(seed))
            step.step()
        weights[fused] = parameter.detach()
    assert not torch.equal(weights[True], start)
    torch.testing.assert_close(weights[True], weights[None], rtol=1e-6, atol=1e-7)


TRAINING_STEPS = """
import resource, sys
import torch, torch.nn as nn
from cnnpipe.models.hardware import keep_freed_memory
if sys.argv[1] == "kept":
    assert keep_freed_memory()
net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                    nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                    nn.Flatten(), nn.Linear(1568, 128), nn.ReLU(), nn.Linear(128, 10))
optimizer = torch.optim.AdamW(net.parameters())
images, labels = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
def step():
    loss = nn.functional.cross_entropy(net(images), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
for _ in range(10):  # the first steps fault their memory in either way
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) * resource.getpagesize())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's malloc's")
def test_kept_memory_is_not_faulted_in_again_every_training_step():
    """The steps of the lecture's small network (the default before conv2 48 and dense 256) in fresh processes
    (the setting is process-wide): with glibc's defaults, 40 steps page-faulted 30 to 1,100 MiB here (more with
    more threads), with the setting 0 to 6 MiB."""

    def faulted(mode: str) -> int:
        result = subprocess.run([sys.executable, "-c", TRAINING_STEPS, mode], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return int(result.stdout)

    default, kept = faulted("default"), faulted("kept")
    assert default > 16 << 20, default  # the behaviour the setting is there for
    assert kept < default / 4, (kept, default)


@pytest.mark.parametrize(
    "command",
    [
        ["train"],
        ["export"],  # a DVC stage run through the tools' path
        ["predict", "{missing}.png"],
        ["rf", "lenet5"],
        ["compare", "--tracking-uri", "sqlite:///{missing}.db", "--experiment", "none"],
    ],
)
def test_a_stage_or_tool_start_freezes_its_imports_and_keeps_the_collector_on(tmp_path: Path, command: list[str]):
    """cli.main imports a stage or a tool with the cyclic collector off and freezes the modules: later
    collections skip them. The collector must be on again afterwards, also when the command then fails (here:
    no params file, no such image or store) or succeeds (rf)."""
    missing = tmp_path / "missing"
    script = (
        "import gc, sys; from cnnpipe.cli import main; "
        "code = main(sys.argv[1:]); print(code, gc.isenabled(), gc.get_freeze_count())"
    )
    argv = ["--params", f"{missing}.yaml", *(part.format(missing=missing) for part in command)]
    result = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, cwd=tmp_path)
    code, enabled, frozen = result.stdout.split()[-3:]
    assert (code, enabled) == ("0" if command[0] == "rf" else "2", "True"), result.stderr
    assert int(frozen) > 100_000  # torch, Lightning and MLflow's objects


def test_torch_stops_looking_for_an_absent_nvml_and_answers_as_before(monkeypatch):
    """Lightning's NVML-based CUDA check tries to load NVIDIA's library on every optimizer step; where it is
    absent the check is switched off, where it exists it stays. Either way torch's answer is the same."""
    import ctypes

    import torch

    monkeypatch.setenv(NVML_CHECK, "1")
    available = torch.cuda.is_available()
    try:
        ctypes.CDLL(NVML_LIBRARY)
        nvml = True
    except OSError:
        nvml = False
    assert skip_absent_nvml() is not nvml
    assert os.environ[NVML_CHECK] == ("1" if nvml else "0")
    assert torch.cuda.is_available() == available
    monkeypatch.setenv(NVML_CHECK, "0")
    assert skip_absent_nvml() is False and os.environ[NVML_CHECK] == "0"
