"""The trained model as an MLflow Model (pytorch flavour, with signature and input example), registered by name.

What is logged is a `Predictor`: images [B, C, H, W] in [0, 1] in, one probability per class out, so
`mlflow models predict -m models:/NAME@champion` answers in the classes' terms without any cnnpipe code.
"""

from __future__ import annotations

import mlflow
import mlflow.pytorch
import numpy as np
import torch
from mlflow.models import infer_signature

from cnnpipe.models.module import CnnClassifier, Predictor
from cnnpipe.tracking.mlflow_run import TrackedRun

MODEL_NAME = "model"  # the logged model's name inside the run


def log_model(run: TrackedRun, module: CnnClassifier, example: np.ndarray, registered_model: str | None) -> str | None:
    """Logs the model into `run` and, with a name, registers a new version of it: returns the version."""
    predictor = Predictor(module.network, module.binary).cpu().eval()
    example = np.ascontiguousarray(example, dtype=np.float32)
    with torch.no_grad():
        output = predictor(torch.from_numpy(example)).numpy()
    signature = infer_signature(example, output)
    registered: list[str] = []

    def log() -> None:
        mlflow.set_tracking_uri(run.tracking_uri)
        # log_model needs mlflow's active run; entering it for the run we already have keeps one run.
        with mlflow.start_run(run_id=run.run_id):
            info = mlflow.pytorch.log_model(
                predictor,
                name=MODEL_NAME,
                signature=signature,
                input_example=example,
                registered_model_name=registered_model,
                pip_requirements=mlflow.pytorch.get_default_pip_requirements(),  # skips a slow inference step
                metadata={"classes": module.classes},
            )
        if info.registered_model_version is not None:
            registered.append(str(info.registered_model_version))

    run.log_call(f"model{f' {registered_model}' if registered_model else ''}", log)
    return registered[0] if registered else None
