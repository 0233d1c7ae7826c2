"""What MLflow's system metrics monitor costs a training, side by side in one run.

Trains the network of params.yaml (cnnpipe's own build_model_network, AdamW, cross-entropy) on random
28x28 greyscale images in one process, in segments of a fixed number of batches: without the monitor, and
with SystemMetrics logging to a run in a fresh SQLite store at MLflow's default interval (10 s) and at 1 s.
The variants take turns in every round, in a rotated order (ABC, BCA, CAB, ...) so that drift of the machine
falls on all of them; each ratio is against the round's own baseline, and the spread is over the rounds.
It also reads the CPU time of the monitor's thread itself, the part of the cost that does not depend on noise.
Needs no pulled data.
Usage: .venv/bin/python benchmarks/system_metrics.py [--rounds 3] [--seconds 30] [--device cpu|cuda] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil
import torch
import torch.nn.functional as F
from machine import cpu_model  # benchmarks/ is the script's own folder, first on sys.path

from cnnpipe.config import MlflowConfig, load_params
from cnnpipe.models.network import build_model_network
from cnnpipe.tracking.mlflow_run import start_run
from cnnpipe.tracking.system_metrics import DEFAULT_INTERVAL_S, SystemMetrics

BASELINE = "no monitor"
VARIANTS = {
    BASELINE: None,
    f"monitor, every {DEFAULT_INTERVAL_S:g} s (default)": DEFAULT_INTERVAL_S,
    "monitor, every 1 s": 1.0,
}


class Training:
    """The params.yaml network and its optimiser on a fixed set of random batches, stepped in place."""

    def __init__(self, batch_size: int, lr: float, device: str, batches: int = 32):
        params = load_params()
        _, self.network = build_model_network(params.model, (1, 28, 28), 10, [0.5], [0.25])
        self.network.to(device).train()
        self.optimizer = torch.optim.AdamW(self.network.parameters(), lr=lr)
        generator = torch.Generator().manual_seed(0)
        self.data = [
            (
                torch.rand(batch_size, 1, 28, 28, generator=generator).to(device),
                torch.randint(0, 10, (batch_size,), generator=generator).to(device),
            )
            for _ in range(batches)
        ]
        self.batch_size = batch_size
        self.device = device

    def run(self, steps: int) -> float:
        """Seconds for `steps` training steps."""
        self._sync()
        started = time.perf_counter()
        for step in range(steps):
            images, labels = self.data[step % len(self.data)]
            self.optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(self.network(images), labels).backward()
            self.optimizer.step()
        self._sync()
        return time.perf_counter() - started

    def _sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()


def thread_cpu_seconds(native_id: int | None) -> float:
    """User + system CPU seconds of one thread of this process (Linux), 0 when it is gone."""
    for thread in psutil.Process().threads():
        if thread.id == native_id:
            return thread.user_time + thread.system_time
    return 0.0


def segment(training: Training, steps: int, uri: str, interval: float | None) -> tuple[float, float]:
    """(images/s, CPU seconds of the monitor's thread) of one segment."""
    if interval is None:
        return steps * training.batch_size / training.run(steps), 0.0
    run = start_run(MlflowConfig(tracking_uri=uri, experiment="system-metrics-cost"))
    monitor = SystemMetrics(run.run_id, uri, interval=interval, gpu=training.device.startswith("cuda"))
    if not monitor.start():
        raise SystemExit("the monitor did not start")
    thread_id = monitor._monitor._process.native_id
    seconds = training.run(steps)
    cpu = thread_cpu_seconds(thread_id)  # before stop(): the thread is still there to be read
    monitor.stop()
    run.finish()
    return steps * training.batch_size / seconds, cpu / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of one segment")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads; default: torch's own")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    params = load_params()
    training = Training(params.train.batch_size, params.train.lr, args.device)
    training.run(20)  # warm-up
    steps = max(10, round(args.seconds * 20 / training.run(20)))  # a segment of about --seconds
    names = list(VARIANTS)
    speed: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as folder:
        uri = f"sqlite:///{Path(folder)}/mlflow.db"
        start_run(MlflowConfig(tracking_uri=uri, experiment="system-metrics-cost")).finish()  # the store's migrations
        for round_ in range(args.rounds):
            order = names[round_ % len(names) :] + names[: round_ % len(names)]
            for name in order:
                value, share = segment(training, steps, uri, VARIANTS[name])
                speed[name].append(value)
                cpu[name].append(share)
                print(f"round {round_ + 1}  {name:34} {value:8.0f} images/s")

    print(
        f"\n{datetime.now(UTC):%Y-%m-%d}, {cpu_model()}, {psutil.cpu_count()} logical CPUs, torch threads "
        f"{torch.get_num_threads()}, device {args.device}; batch {training.batch_size}, {steps} batches "
        f"(~{args.seconds:g} s) per segment, {args.rounds} rounds"
    )
    print(f"{'variant':34} {'images/s':>9} {'ratio':>7} {'spread (min..max)':>19} {'monitor CPU':>12}")
    for name in names:
        ratios = [value / base for value, base in zip(speed[name], speed[BASELINE], strict=True)]
        print(
            f"{name:34} {statistics.mean(speed[name]):9.0f} {statistics.mean(ratios):7.4f} "
            f"{min(ratios):9.4f}..{max(ratios):.4f} {statistics.mean(cpu[name]):11.3%}"
        )
    print("ratio: images/s over the same round's no-monitor segment; monitor CPU: its thread's CPU time / wall time")


if __name__ == "__main__":
    main()
