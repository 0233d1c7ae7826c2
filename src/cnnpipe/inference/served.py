"""The model MLflow serves: a TorchScript classifier that answers with class names and checks its input.

This file is logged as the model's code (MLflow's "models from code"): it imports numpy, pandas, torch and
mlflow but nothing of cnnpipe, so `mlflow models serve` answers without cnnpipe installed. The classes and the
input shape come from the model's config.
"""

import warnings

import mlflow.models
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

SCRIPT_ARTIFACT = "torchscript"  # the artifact key of the TorchScript file
CONFIG_KEYS = ("classes", "shape")  # the model config: class names in output order, input [C, H, W]
NUMBERS = "fiu"  # numpy's kinds of float, signed and unsigned integer arrays: what pixels are
NOT_NUMBERS = {"b": "booleans", "U": "text", "S": "text", "c": "complex numbers"}  # null, objects, mixed: none
SHOWN_DIMENSIONS = 8  # a deeper input is said by its depth: its shape would be a long list of ones


class InputError(MlflowException):
    """HTTP 400 with this message only. MLflow's scoring server prefixes an error with the whole input
    (`Failed to predict data '...'`: 17 KB for one 28x28 image); the prefix is dropped here."""

    def __init__(self, message: str):
        self._clear = message
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._clear

    @message.setter
    def message(self, _: str) -> None:
        pass


def output_columns(classes: list[str]) -> tuple[str, str]:
    """The names of the predicted class's and its probability's columns: `class` and `probability`, unless a
    class is named so (its own probability column takes the plain name)."""
    taken = set(classes)
    return (
        ("predicted_class", "predicted_probability") if {"class", "probability"} & taken else ("class", "probability")
    )


class ImageClassifier(PythonModel):
    """float32 images [N, C, H, W] with values in [0, 1] -> one row per image: `class` (the most probable class's
    name), `probability` (its probability) and one column per class with its probability."""

    classes: list[str]
    shape: tuple[int, int, int]
    network: torch.jit.ScriptModule

    def load_context(self, context) -> None:
        self.classes = list(context.model_config["classes"])
        self.shape = tuple(int(size) for size in context.model_config["shape"])
        with warnings.catch_warnings():  # torch.jit's deprecation: the file format is what libtorch loads
            warnings.simplefilter("ignore", FutureWarning)
            self.network = torch.jit.load(context.artifacts[SCRIPT_ARTIFACT], map_location="cpu").eval()

    def check(self, images) -> np.ndarray:
        """The input as float32 [N, C, H, W], or an InputError that says what is wrong without repeating it."""
        channels, height, width = self.shape
        expected = f"float32 images [N, {channels}, {height}, {width}] with values in [0, 1]"
        if isinstance(images, pd.DataFrame):
            raise InputError(f'expected {expected} as a tensor ({{"inputs": [...]}}), got a table')
        try:
            array = np.asarray(images)
        except (TypeError, ValueError):  # ragged, or nested deeper than numpy's 64 dimensions
            raise InputError(f"expected {expected}; the input is no array of numbers") from None
        if array.dtype.kind not in NUMBERS:  # float32 would turn true into 1, "0.5" into 0.5 and null into NaN
            kind = NOT_NUMBERS.get(array.dtype.kind)
            raise InputError(
                f"expected {expected}, got {kind}" if kind else f"expected {expected}; the input is no array of numbers"
            )
        array = array.astype(np.float32, copy=False)
        if array.ndim == 3 and array.shape == self.shape:
            array = array[None]  # one image
        if array.ndim != 4 or array.shape[1:] != self.shape:
            got = f"shape {list(array.shape)}" if array.ndim <= SHOWN_DIMENSIONS else f"{array.ndim} dimensions"
            raise InputError(f"expected {expected}, got {got}")
        if array.size and not (np.isfinite(array).all() and array.min() >= 0 and array.max() <= 1):
            low, high = np.nanmin(array), np.nanmax(array)
            raise InputError(
                f"expected {expected}, got values {low:g}..{high:g}"
                + (" and NaN or infinity" if not np.isfinite(array).all() else "")
                + "; divide 8-bit pixels by 255"
            )
        return array

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """[N, K] class probabilities of float32 [N, C, H, W] images that passed `check`."""
        with torch.inference_mode():
            return self.network(torch.from_numpy(np.ascontiguousarray(images))).numpy()

    def predict(self, context, model_input: np.ndarray, params=None) -> pd.DataFrame:
        probabilities = self.probabilities(self.check(model_input))
        name, probability = output_columns(self.classes)
        best = probabilities.argmax(axis=1) if len(probabilities) else np.zeros(0, dtype=int)
        table = pd.DataFrame(probabilities.astype(np.float64), columns=self.classes)
        table.insert(0, probability, probabilities[np.arange(len(best)), best].astype(np.float64))
        table.insert(0, name, np.asarray(self.classes, dtype=object)[best])
        return table


if not __name__.startswith("cnnpipe."):  # run by MLflow as the model's code, not imported as part of cnnpipe
    mlflow.models.set_model(ImageClassifier())
