"""Using the trained model, side by side in one run: `cnnpipe predict` images/s on a folder of PNG files, and the
exported ONNX file on onnxruntime against PyTorch eager (and the TorchScript file) at batch 1 (latency) and
batch 256 (throughput), on the same real test images.

predict is timed as the command reports it (decoding, resizing and inference, not loading the model) and as a
whole process (`time cnnpipe predict`, imports included). Latency: the median of --repeats single-image calls
after a warm-up; throughput: images/s over --repeats batches of 256. Run `make repro` first (data/pulled and
data/train/model.ckpt).
Usage:
  .venv/bin/python benchmarks/predict.py [--images 5000] [--repeats 200]
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from machine import cpu_model  # benchmarks/ is the script's own folder, first on sys.path
from PIL import Image
from rich.console import Console

from cnnpipe.config import LimitsConfig
from cnnpipe.data.datamodule import to_model_input
from cnnpipe.data.store import load_store
from cnnpipe.inference import export
from cnnpipe.inference.inputs import collect
from cnnpipe.inference.model import from_checkpoint, torch_probabilities
from cnnpipe.inference.predict import predict

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT, PULLED = REPO / "data/train/model.ckpt", REPO / "data/pulled"


def _latency_ms(run, image: np.ndarray, repeats: int) -> float:
    for _ in range(10):
        run(image)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(image)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def _throughput(run, batch: np.ndarray, repeats: int) -> float:
    run(batch)
    start = time.perf_counter()
    for _ in range(repeats):
        run(batch)
    return len(batch) * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000, help="test images written as PNG files for predict")
    parser.add_argument("--repeats", type=int, default=200, help="timed calls at batch 1; batches of 256: a tenth")
    args = parser.parse_args()
    model = from_checkpoint(CHECKPOINT)
    _, splits = load_store(PULLED)
    images = np.asarray(splits["test"].images[: args.images])
    print(f"{datetime.now(UTC):%Y-%m-%d}, {cpu_model()}, torch {torch.__version__} ({torch.get_num_threads()} threads)")
    print(f"model {CHECKPOINT.relative_to(REPO)}: input {list(model.shape)}, {len(model.classes)} classes\n")

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "png").mkdir()
        for index, image in enumerate(images):
            pixels = image.squeeze(-1) if image.shape[-1] == 1 else image
            Image.fromarray(pixels).save(root / "png" / f"{index:05d}.png")
        found = collect([str(root / "png")], root / "scratch", LimitsConfig())
        quiet = Console(file=io.StringIO())
        outcome = predict(model, found, 256, 3, LimitsConfig().max_image_pixels, quiet)
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "cnnpipe", "predict", str(root / "png"), "--output", str(root / "p.csv")],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        process = time.perf_counter() - start
        print(f"cnnpipe predict on {len(images):,} PNG files ({images.shape[1]}x{images.shape[2]}):")
        print(f"  {outcome.images_per_second:,.0f} images/s decoding + inference (as the command reports it)")
        print(f"  {process:.1f} s for the whole process, imports and model loading included\n")

        onnx_file, script_file = root / "model.onnx", root / "model.pt"
        meta = export.metadata(model.classes, model.shape)
        export.to_onnx(model.predictor, model.shape, onnx_file, 18, meta)
        export.to_torchscript(model.predictor, model.shape, script_file, meta)
        runtimes = {
            "PyTorch eager": model.probabilities,
            "TorchScript": torch_probabilities(export.load_torchscript(script_file)),
            "onnxruntime": export.onnx_probabilities(onnx_file),
        }
        one = to_model_input(images[:1]).numpy()
        batch = to_model_input(images[:256]).numpy()
        print(f"{'runtime':<16}{'batch 1 latency':>18}{'batch 1 images/s':>18}{'batch 256 images/s':>20}")
        for name, run in runtimes.items():
            latency = _latency_ms(run, one, args.repeats)
            rate = _throughput(run, batch, max(5, args.repeats // 10))
            print(f"{name:<16}{latency:>15.3f} ms{1000 / latency:>18,.0f}{rate:>20,.0f}")


if __name__ == "__main__":
    main()
