"""The trained model as an MLflow Model, registered by name; the exported files logged beside it; any logged
model loaded back for `cnnpipe predict`.

What is logged is `inference/served.py` as the model's code (a pyfunc) with the TorchScript file of the
`Predictor`: float32 images [N, C, H, W] in [0, 1] in, one row per image out with `class` (the name of the most
probable class), `probability` and one column per class. It checks the shape and the [0, 1] range itself and
answers HTTP 400 with one short line, and it needs torch, numpy, pandas and mlflow but no cnnpipe code, so
`mlflow models serve -m models:/NAME@champion` answers on any machine.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import SimpleNamespace

import mlflow
import mlflow.onnx
import mlflow.pyfunc
import mlflow.pytorch
import numpy as np
import pandas
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature, infer_signature
from mlflow.store.artifact.utils.models import get_model_name_and_version
from mlflow.tracking import MlflowClient

from cnnpipe.errors import CnnpipeError
from cnnpipe.inference import export, served
from cnnpipe.inference.model import Classifier
from cnnpipe.models.module import CnnClassifier, Predictor
from cnnpipe.tracking.mlflow_run import SQLITE, TrackedRun, follow_moved_store

MODEL_NAME = "model"  # the logged model's name inside the run
ONNX_NAME = "onnx"  # the exported ONNX file as a model of MLflow's onnx flavour, in the same run
EXPORT_FOLDER = "export"  # the exported files as the training run's artifacts


def input_spec(shape: tuple[int, ...]) -> dict:
    channels, height, width = shape
    return {"shape": [-1, channels, height, width], "dtype": "float32", "range": [0, 1], "layout": "NCHW"}


def log_model(run: TrackedRun, module: CnnClassifier, example: np.ndarray, registered_model: str | None) -> str | None:
    """Logs the model into `run` and, with a name, registers a new version of it: returns the version."""
    predictor = Predictor(module.network, module.binary).cpu().eval()
    shape = tuple(int(size) for size in module.hparams.input_shape)
    config = {"classes": list(module.classes), "shape": list(shape)}
    example = np.ascontiguousarray(example, dtype=np.float32)
    registered: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="cnnpipe-model-"))
    script = folder / export.FILES["torchscript"]
    export.to_torchscript(predictor, shape, script, export.metadata(module.classes, shape))
    answer = served.ImageClassifier()
    answer.load_context(SimpleNamespace(model_config=config, artifacts={served.SCRIPT_ARTIFACT: str(script)}))
    # No input schema: MLflow's own check of one answers HTTP 400 with the whole input repeated (17 KB for one
    # 28x28 image). served.py checks the shape and the range and says what is wrong in one line; the input is
    # documented by the metadata (`input`), the version's description and the input example.
    signature = ModelSignature(outputs=infer_signature(example, answer.predict(None, example)).outputs)

    def log() -> None:
        mlflow.set_tracking_uri(run.tracking_uri)
        # log_model needs mlflow's active run; entering it for the run we already have keeps one run.
        with mlflow.start_run(run_id=run.run_id):
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAME,
                python_model=served.__file__,  # "models from code": the file itself is the model's code
                artifacts={served.SCRIPT_ARTIFACT: str(script)},
                model_config=config,
                signature=signature,
                input_example=example,
                registered_model_name=registered_model,
                pip_requirements=[*mlflow.pytorch.get_default_pip_requirements(), f"pandas=={pandas.__version__}"],
                metadata={"classes": module.classes, "input": input_spec(shape)},
            )
        if info.registered_model_version is not None:
            registered.append(str(info.registered_model_version))

    try:
        run.log_call(f"model{f' {registered_model}' if registered_model else ''}", log)
    finally:
        script.unlink(missing_ok=True)
        folder.rmdir()
    return registered[0] if registered else None


def log_exports(
    run: TrackedRun, folder: Path, formats: list[str], classes: list[str], shape: tuple, example: np.ndarray
) -> None:
    """The exported files (and export.json) under export/, and the ONNX file also as a model of the onnx flavour
    (`mlflow.pyfunc.load_model("runs:/RUN/onnx")` runs it on onnxruntime). The run's status and end time stay."""
    for name in [*(export.FILES[fmt] for fmt in formats), "export.json"]:
        run.log_artifact(folder / name, EXPORT_FOLDER)
    if "onnx" not in formats:
        return
    import onnx

    path = folder / export.FILES["onnx"]
    output = export.onnx_probabilities(path)(example)

    def log() -> None:
        mlflow.set_tracking_uri(run.tracking_uri)
        # the run's experiment: without an active run MLflow would file the model under "Default", where
        # runs:/RUN/onnx does not find it
        mlflow.set_experiment(experiment_id=run.client.get_run(run.run_id).info.experiment_id)
        Model.log(  # with run_id, not an active run: reopening the finished run would change its end time
            artifact_path=None,
            name=ONNX_NAME,
            flavor=mlflow.onnx,
            onnx_model=onnx.load(str(path)),
            run_id=run.run_id,
            signature=infer_signature(example, output),
            input_example=example,
            metadata={"classes": classes, "input": input_spec(shape)},
            pip_requirements=mlflow.onnx.get_default_pip_requirements(),
            save_as_external_data=False,
            onnx_execution_providers=["CPUExecutionProvider"],  # as verified; a GPU server names its own
        )

    run.log_call("onnx model", log)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def load_classifier(uri: str, tracking_uri: str) -> Classifier:
    """A model logged by cnnpipe at an MLflow model URI (models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/model):
    this module's pyfunc, or the pytorch flavour of earlier versions."""
    _follow_moved_store(uri, tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    try:
        loaded = mlflow.pyfunc.load_model(uri)
    except (MlflowException, OSError) as exc:
        raise CnnpipeError(f"--model: cannot load {uri} from {tracking_uri}: {_one_line(exc)}") from None
    classes = (loaded.metadata.metadata or {}).get("classes")
    inputs = loaded.metadata.get_input_schema()
    # this module's models have the shape in their config; earlier versions in their input's tensor spec
    shape = (loaded.model_config or {}).get("shape") or (inputs and list(inputs.inputs[0].shape[1:]))
    if not classes or not shape:
        raise CnnpipeError(f"--model: {uri} is not a cnnpipe model: it has no class names or input shape")
    try:
        model = loaded.unwrap_python_model()
    except MlflowException:  # the pytorch flavour: its pyfunc answers [N, K] probabilities
        model = None
    if model is not None and hasattr(model, "probabilities"):
        probabilities = model.probabilities
    else:
        probabilities = lambda images: np.asarray(loaded.predict(images), dtype=np.float32)  # noqa: E731
    return Classifier(
        uri,
        list(classes),
        tuple(int(size) for size in shape),
        probabilities,
        origin=_origin(uri, loaded.metadata.run_id, tracking_uri),
    )


def _follow_moved_store(uri: str, tracking_uri: str) -> None:
    """A moved or copied repository's SQLite store still names the old folder for the model's files: it is
    repointed as train and evaluate repoint it (mlflow_run.follow_moved_store), which needs the model's experiment."""
    if not tracking_uri.startswith(SQLITE):
        return  # a server keeps its artifacts where they are
    client = MlflowClient(tracking_uri)
    try:
        experiment = client.get_experiment(_experiment_of(client, uri)).name
    except (MlflowException, TypeError):  # no such model, or a version of no run (None)
        return  # load_model says what is wrong, by the URI
    follow_moved_store(tracking_uri, experiment)


def _experiment_of(client: MlflowClient, uri: str) -> str:
    """The experiment id of the model at `uri`: runs:/ID/PATH, models:/NAME/VERSION, models:/NAME@ALIAS, models:/ID."""
    if uri.startswith("runs:/"):
        run_id = uri.removeprefix("runs:/").split("/", 1)[0]
    else:
        found = get_model_name_and_version(client, uri)
        if len(found) == 1:  # an MLflow 3 logged model's id
            return client.get_logged_model(found[0]).experiment_id
        run_id = client.get_model_version(*found).run_id
    return client.get_run(run_id).info.experiment_id


def _origin(uri: str, run_id: str | None, tracking_uri: str) -> str:
    """The MLflow run behind a model URI, and the registered version a models:/ URI resolves to."""
    origin = f"MLflow run {run_id}" if run_id else "no MLflow run recorded"
    if not uri.startswith("models:/"):
        return origin
    name, _, which = uri.removeprefix("models:/").partition("@")
    client = MlflowClient(tracking_uri)
    try:
        version = (
            client.get_model_version_by_alias(name, which) if which else client.get_model_version(*name.split("/"))
        )
    except (MlflowException, TypeError):  # resolved by load_model a moment ago; a race is no reason to stop
        return origin
    return f"{origin}, registered {version.name} version {version.version}"
