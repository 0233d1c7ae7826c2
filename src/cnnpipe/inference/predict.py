"""`cnnpipe predict`: a trained model's classes for image files, as CSV or JSON.

Each file is decoded exactly as `pull` decodes an image folder (`data/decode.py`: EXIF orientation, 16-bit and
float images scaled by their range, alpha over black, greyscale or RGB by the model's channels, bilinear resize
to the model's [H, W]) and scaled to [0, 1] as training does (`to_model_input`). A file that cannot be read is
listed with its reason and skipped; the others are predicted.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from cnnpipe.data.datamodule import to_model_input
from cnnpipe.data.decode import GREYSCALE_MODES, decode, read_mode
from cnnpipe.errors import CnnpipeError
from cnnpipe.inference.inputs import KEY, Found, ImageFile
from cnnpipe.inference.model import Classifier

FORMATS = {".csv": "csv", ".json": "json"}
DECODE_THREADS = min(4, os.cpu_count() or 1)  # PIL decodes and resizes without the GIL


@dataclass(frozen=True)
class Prediction:
    name: str
    top: list[tuple[str, float]]  # (class, probability), most probable first


@dataclass(frozen=True)
class Outcome:
    predictions: list[Prediction]
    failed: list[tuple[str, str]]  # (name, reason)
    seconds: float  # decoding and inference, without loading the model
    converted: int  # images whose colour the model's channels changed (colour to greyscale, or back)

    @property
    def images_per_second(self) -> float:
        return len(self.predictions) / self.seconds if self.seconds else 0.0


def output_format(path: Path) -> str:
    """csv or json by the suffix of --output, checked before any work with where it goes."""
    if path.is_dir():
        raise CnnpipeError(f"--output: {path} is a directory; give a file path, such as {path / 'predictions.csv'}")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise CnnpipeError(f"--output: {path} must end in .csv or .json (the format is chosen by the suffix)")
    if not path.parent.is_dir():
        raise CnnpipeError(f"--output: the folder {path.parent} does not exist; create it or write elsewhere")
    return fmt


def _reason(error: CnnpipeError, image: ImageFile) -> str:
    """decode's one line, without its key and with the name the user knows (not an archive's scratch path)."""
    reason = str(error).removeprefix(f"{KEY}: ").removeprefix(f"cannot read image {image.path}: ")
    return reason.replace(str(image.path), image.name)


def _load(image: ImageFile, classifier: Classifier, max_pixels: int) -> tuple[np.ndarray | None, str | bool]:
    """uint8 [H, W, C] as pull stores it, and whether its colour was converted; or None and the reason."""
    channels, height, width = classifier.shape
    try:
        greyscale = read_mode(image.path, max_pixels, KEY) in GREYSCALE_MODES
        return decode(image.path, channels, (height, width), max_pixels, KEY), greyscale != (channels == 1)
    except CnnpipeError as error:
        return None, _reason(error, image)


def predict(
    classifier: Classifier, found: Found, batch_size: int, top_k: int, max_pixels: int, console: Console
) -> Outcome:
    """Decodes a batch of files on DECODE_THREADS threads, then runs it through the model; a progress bar counts
    the files."""
    predictions: list[Prediction] = []
    failed = list(found.broken)
    converted = 0
    top_k = min(top_k, len(classifier.classes))
    columns = (TextColumn("Predicting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    start = time.perf_counter()
    with ThreadPoolExecutor(DECODE_THREADS) as pool, Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("predict", total=len(found.images))
        for first in range(0, len(found.images), batch_size):
            files = found.images[first : first + batch_size]
            batch, names = [], []
            loaded = pool.map(lambda image: _load(image, classifier, max_pixels), files)
            for image, (array, outcome) in zip(files, loaded, strict=True):
                if array is None:
                    failed.append((image.name, outcome))
                    continue
                batch.append(array)
                names.append(image.name)
                converted += bool(outcome)
            if batch:
                probabilities = classifier.probabilities(to_model_input(np.stack(batch)).numpy())
                best = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
                for name, row, order in zip(names, probabilities, best, strict=True):
                    top = [(classifier.classes[index], float(row[index])) for index in order]
                    predictions.append(Prediction(name, top))
            bar.advance(task, len(files))
    return Outcome(predictions, failed, time.perf_counter() - start, converted)


def _csv(outcome: Outcome, top_k: int) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    ranks = [f"_{rank}" for rank in range(2, top_k + 1)]
    writer.writerow(
        ["path", "class", "probability", *(f"{kind}{rank}" for rank in ranks for kind in ("class", "probability"))]
        + ["error"]
    )
    for prediction in outcome.predictions:
        cells = [value for name, probability in prediction.top for value in (name, f"{probability:.6f}")]
        writer.writerow([prediction.name, *cells, *[""] * (2 * top_k - len(cells)), ""])
    for name, reason in outcome.failed:
        writer.writerow([name, *[""] * (2 * top_k), reason])
    return text.getvalue()


def _json(outcome: Outcome, classifier: Classifier) -> str:
    return json.dumps(
        {
            "model": classifier.source,
            "classes": classifier.classes,
            "images": len(outcome.predictions),
            "failed": len(outcome.failed),
            "predictions": [
                {
                    "path": prediction.name,
                    "class": prediction.top[0][0],
                    "probability": round(prediction.top[0][1], 6),
                    "top_k": [{"class": name, "probability": round(value, 6)} for name, value in prediction.top],
                }
                for prediction in outcome.predictions
            ],
            "errors": [{"path": name, "error": reason} for name, reason in outcome.failed],
        },
        indent=2,
    )


def render(outcome: Outcome, classifier: Classifier, fmt: str, top_k: int) -> str:
    return _csv(outcome, min(top_k, len(classifier.classes))) if fmt == "csv" else _json(outcome, classifier) + "\n"


def write(path: Path, text: str) -> None:
    """In one piece: a temporary file beside `path`, renamed over it once complete; on failure nothing is left.
    A file name that is no UTF-8 is written as the bytes it is (surrogateescape, as Python read it)."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        temporary.write_text(text, errors="surrogateescape")
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise CnnpipeError(f"--output: cannot write {path}: {exc.strerror or exc}") from None
