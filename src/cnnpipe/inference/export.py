"""The trained model as files other runtimes load: ONNX (onnxruntime, TensorRT, ...) and TorchScript (C++ libtorch),
each checked against PyTorch on real images before it counts as exported.

Both hold the served `Predictor`: float32 images [N, C, H, W] in [0, 1] in, class probabilities [N, K] out, the
per-channel normalisation inside; the batch axis is dynamic. The class names and the input spec travel with
the file: ONNX metadata_props, and a TorchScript extra file `cnnpipe.json`.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from cnnpipe.console import warn
from cnnpipe.data.datamodule import to_model_input
from cnnpipe.errors import CnnpipeError
from cnnpipe.inference.model import Probabilities, torch_probabilities
from cnnpipe.models.module import Predictor

FILES = {"onnx": "model.onnx", "torchscript": "model.pt"}
INPUT_NAME, OUTPUT_NAME = "images", "probabilities"
EXTRA_FILE = "cnnpipe.json"  # TorchScript: the metadata, read back with torch.jit.load(_extra_files=...)


def metadata(classes: list[str], shape: tuple[int, int, int]) -> dict[str, str]:
    """What a runtime needs to use the file, as string key-value pairs (ONNX metadata_props take only strings)."""
    channels, height, width = shape
    return {
        "cnnpipe.classes": json.dumps(classes),
        "cnnpipe.input": json.dumps(
            {
                "name": INPUT_NAME,
                "shape": ["N", channels, height, width],
                "dtype": "float32",
                "range": [0, 1],
                "layout": "NCHW",
                "colour": "greyscale" if channels == 1 else "RGB",
                "normalised": "inside the model: give pixel / 255",
            }
        ),
        "cnnpipe.output": json.dumps({"name": OUTPUT_NAME, "shape": ["N", len(classes)], "means": "probabilities"}),
    }


@contextlib.contextmanager
def _quiet():
    """The exporters' progress lines and torch.jit's deprecation warnings are not for the person running cnnpipe."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        level = logging.getLogger("torch.onnx").level
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        try:
            yield
        finally:
            logging.getLogger("torch.onnx").setLevel(level)


def to_onnx(predictor: Predictor, shape: tuple[int, int, int], path: Path, opset: int, meta: dict[str, str]) -> int:
    """Exports with torch.export (the dynamo exporter) and a dynamic batch axis; returns the opset written."""
    import onnx

    example = torch.rand(2, *shape)  # 2, not 1: a batch of one could be specialised into the graph
    batch = torch.export.Dim("batch", min=1)
    try:
        with _quiet():
            program = torch.onnx.export(
                predictor.eval(),
                (example,),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamo=True,
                dynamic_shapes={"images": {0: batch}},
                external_data=False,
                verbose=False,
            )
    except Exception as exc:  # noqa: BLE001 - torch.export's errors are many; the model is what cannot be exported
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise CnnpipeError(f"export: the model cannot be exported to ONNX opset {opset}: {reason}") from None
    model = program.model_proto
    model.doc_string = "cnnpipe classifier: images [N, C, H, W] in [0, 1] -> class probabilities [N, K]"
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


def to_torchscript(predictor: Predictor, shape: tuple[int, int, int], path: Path, meta: dict[str, str]) -> None:
    """Traced (a CNN is a feed-forward graph), saved with the metadata as an extra file. A forward that branches on
    its tensors' values (a network of your own, model.class) traces one branch only: said, not hidden."""
    with _quiet(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", torch.jit.TracerWarning)
        script = torch.jit.trace(predictor.eval(), torch.rand(2, *shape))
        torch.jit.save(script, str(path), _extra_files={EXTRA_FILE: json.dumps(meta)})
    torch_code = Path(torch.__file__).parent  # its own shape checks (group_norm's) warn too, and trace right
    traced = [
        warning
        for warning in caught
        if issubclass(warning.category, torch.jit.TracerWarning)
        and not Path(warning.filename).is_relative_to(torch_code)
    ]
    if traced:
        where = f"{Path(traced[0].filename).name}, line {traced[0].lineno}"
        warn(
            f"TorchScript: the network's forward depends on its tensors' values ({where}: "
            f"{str(traced[0].message).split('.')[0]}); the traced model answers as the images it was traced "
            "with did, so other images may get other answers (export checks its files against PyTorch)"
        )


def load_torchscript(path: Path) -> torch.jit.ScriptModule:
    with _quiet():
        return torch.jit.load(str(path), map_location="cpu").eval()


def onnx_probabilities(path: Path, threads: int | None = None) -> Probabilities:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda images: session.run(None, {INPUT_NAME: np.ascontiguousarray(images, dtype=np.float32)})[0]


def runtime(fmt: str, path: Path) -> Probabilities:
    """The exported file, loaded by the runtime that would use it."""
    return onnx_probabilities(path) if fmt == "onnx" else torch_probabilities(load_torchscript(path))


def read_metadata(fmt: str, path: Path) -> dict[str, str]:
    if fmt == "onnx":
        import onnx

        return {entry.key: entry.value for entry in onnx.load(str(path), load_external_data=False).metadata_props}
    files = {EXTRA_FILE: ""}
    with _quiet():
        torch.jit.load(str(path), map_location="cpu", _extra_files=files)
    return json.loads(files[EXTRA_FILE])


@dataclass(frozen=True)
class Verification:
    images: int
    max_abs_diff: float  # the largest |probability difference| over every image and class
    top1_agreement: float  # the fraction of images with the same most probable class
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.top1_agreement == 1.0


def verify(
    exported: Probabilities, reference: Probabilities, images: np.ndarray, batch_size: int, tolerance: float
) -> Verification:
    """Both answer every image of uint8 [N, H, W, C] `images` (scaled as training does) in batches."""
    worst, agree = 0.0, 0
    for start in range(0, len(images), batch_size):
        batch = to_model_input(images[start : start + batch_size]).numpy()
        expected, actual = reference(batch), exported(batch)
        worst = max(worst, float(np.abs(actual - expected).max()))
        agree += int((actual.argmax(axis=1) == expected.argmax(axis=1)).sum())
    return Verification(len(images), worst, agree / len(images), tolerance)


def checked(fmt: str, shown: Path, result: Verification) -> dict:
    """The verification as export.json records it, or one line naming the setting that refused the file and where
    it would have gone (`shown`; it was written to a staging path the person never sees)."""
    if not result.passed:
        way_out = f"; raise it above {result.max_abs_diff:.2e} if that difference is acceptable"
        raise CnnpipeError(
            f"export.tolerance: {shown} ({fmt}) answers {result.images} real images differently from PyTorch: "
            f"max |Δprob| {result.max_abs_diff:.2e} against export.tolerance {result.tolerance:g}, top-1 agreement "
            f"{result.top1_agreement:.4f} (1 required); nothing was written"
            + (way_out if result.top1_agreement == 1 else "")
        )
    return asdict(result)
