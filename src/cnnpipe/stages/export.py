"""DVC stage `export`: the trained model as ONNX and TorchScript files in data/export/, each verified against
PyTorch on real images of the pulled data, and logged into the training's MLflow run.

`cnnpipe export --format F --output PATH` writes one file elsewhere, verified the same way, and logs nothing.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from cnnpipe.config import Params
from cnnpipe.console import console, warn
from cnnpipe.data.datamodule import to_model_input
from cnnpipe.data.store import Manifest, load_store
from cnnpipe.errors import CnnpipeError
from cnnpipe.inference import export
from cnnpipe.inference.model import Classifier, from_checkpoint
from cnnpipe.outputs import replaced_atomically
from cnnpipe.paths import Paths
from cnnpipe.tracking.evaluation_store import EvaluationStore, evaluation_store
from cnnpipe.tracking.mlflow_model import log_exports
from cnnpipe.tracking.mlflow_run import TrackedRun
from cnnpipe.tracking.run_record import RunRecord

RECORD = "export.json"


def _check_same_data(model: Classifier, checkpoint: Path, manifest: Manifest, pulled: Path) -> None:
    """The verification images are the pulled data's: a model trained on other data cannot be checked on them."""
    if tuple(manifest.shape) != model.shape:
        what = "channels" if manifest.shape[0] != model.shape[0] else "size"
        raise CnnpipeError(
            f"{checkpoint}: trained on images {list(model.shape)} ([C, H, W]), but {pulled} holds "
            f"{list(manifest.shape)}: other {what}; rerun `dvc repro` so train and export see the same data"
        )
    if manifest.classes != model.classes:
        raise CnnpipeError(
            f"{checkpoint}: trained on classes {model.classes}, but {pulled} holds {manifest.classes}; "
            "rerun `dvc repro` so train and export see the same data"
        )


def _verification_images(pulled: Path, count: int) -> tuple[Manifest, np.ndarray]:
    """Up to `count` real images: the test split first, then validation and training images if it is smaller."""
    manifest, splits = load_store(pulled, verify=True)
    parts, left = [], count
    for name in ("test", "val", "train"):
        if left and name in splits:
            parts.append(np.asarray(splits[name].images[:left]))
            left -= len(parts[-1])
    return manifest, np.concatenate(parts)


def _export(fmt: str, model: Classifier, path: Path, images: np.ndarray, params: Params, shown: Path) -> dict:
    """Writes one format to `path`, loads it back in its runtime and compares it with PyTorch; `shown` is where
    the file ends up."""
    cfg = params.export
    meta = export.metadata(model.classes, model.shape)
    started = time.perf_counter()
    entry: dict = {"file": path.name}
    if fmt == "onnx":
        entry["opset"] = export.to_onnx(model.predictor, model.shape, path, cfg.opset, meta)
        entry["onnxruntime"] = onnxruntime.__version__
    else:
        export.to_torchscript(model.predictor, model.shape, path, meta)
    result = export.verify(export.runtime(fmt, path), model.probabilities, images, cfg.batch_size, cfg.tolerance)
    entry["verification"] = export.checked(fmt, shown, result)
    entry["bytes"] = path.stat().st_size
    entry["seconds"] = round(time.perf_counter() - started, 2)
    opset = f" (opset {entry['opset']})" if "opset" in entry else ""
    console.print(
        f"{fmt}{opset}: {result.images} real images, max |Δprob| {result.max_abs_diff:.1e}, top-1 identical -> {shown}",
        soft_wrap=True,
    )
    return entry


def _log(store: EvaluationStore, folder: Path, formats: list[str], model: Classifier, images: np.ndarray) -> None:
    """Into the training's MLflow run (data/train/run.json): the files under export/, ONNX also as a model."""
    if store.training is None:
        warn(
            f"MLflow run {store.record.run_id} (the training) is not in {store.client.tracking_uri}: it was "
            "logged elsewhere; the exported files are not logged"
        )
        return
    run = TrackedRun(store.client, store.record.run_id, store.client.tracking_uri)
    log_exports(run, folder, formats, model.classes, model.shape, to_model_input(images[:2]).numpy())
    run.report_unlogged()


def run(params: Params, paths: Paths = Paths(), fmt: str | None = None, output: Path | None = None) -> dict:
    """The stage (no `fmt`: every export.formats into data/export/, logged), or one format to `output`."""
    checkpoint = paths.trained / "model.ckpt"
    model = from_checkpoint(checkpoint)
    manifest, images = _verification_images(paths.pulled, params.export.verify_images)
    _check_same_data(model, checkpoint, manifest, paths.pulled)
    formats = [fmt] if fmt else list(params.export.formats)
    torch.manual_seed(params.seed)  # the exporters' example inputs
    if output is not None:
        temporary = Path(tempfile.mkdtemp(prefix=f".{output.name}-", dir=output.parent))
        try:
            entry = _export(formats[0], model, temporary / output.name, images, params, output)
            os.replace(temporary / output.name, output)
        finally:
            for leftover in temporary.iterdir():
                leftover.unlink()
            temporary.rmdir()
        return {formats[0]: entry}
    run_file = paths.trained / "run.json"
    store = evaluation_store(RunRecord.read(run_file), run_file)  # a run file naming no training stops us here
    record: dict = {"model": str(checkpoint), "classes": model.classes, "input": list(model.shape), "formats": {}}
    with replaced_atomically(paths.exported) as staging:
        for name in formats:
            file = export.FILES[name]
            record["formats"][name] = _export(name, model, staging / file, images, params, paths.exported / file)
        record["torch"] = torch.__version__
        (staging / RECORD).write_text(json.dumps(record, indent=2))
    _log(store, paths.exported, formats, model, images)
    return record
